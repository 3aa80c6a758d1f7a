"""Jars from Maven Central, laid into a cache folder by ``mvn dependency:copy-dependencies``.

The machine reaches Maven Central but not the projects' download sites, so Java programs
the stack or the tests run (the Kafka broker, Apache Avro's reference implementation) come
as a POM's runtime dependency graph. The cache lives outside any state dir, so ``down
--purge`` and a fresh test stack cost no second download.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from clawstream.deploy.local.errors import FetchError
from clawstream.deploy.local.tools import require


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/clawstream`` (default ``~/.cache/clawstream``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clawstream"


def copy_command(mvn: str, pom: Path, properties: Mapping[str, str]) -> list[str]:
    """``mvn`` copying the POM's runtime dependencies; ``properties`` become ``-D`` flags."""
    return [mvn, "-q", "-B", "-f", str(pom), *(f"-D{k}={v}" for k, v in properties.items()),
            "dependency:copy-dependencies"]


def fetch_libs(pom: Path, target: Path, marker: str, properties: Mapping[str, str],
               out_property: str, what: str, *, timeout: float = 900.0) -> Path:
    """The POM's jars in ``target`` (fetched unless ``target/marker`` exists); ``target``.

    ``out_property`` is the POM property naming the output folder. Maven writes into a
    scratch folder that is renamed into place only when it finished, under a file lock, so
    an interrupted fetch or two processes fetching at once never leave a half-filled folder
    that looks complete.
    """
    if (target / marker).is_file():
        return target
    mvn = require("mvn")
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).is_file():
            return target
        scratch = target.parent / f"{target.name}.partial-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        cmd = copy_command(mvn, pom, {**properties, out_property: str(scratch)})
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                    check=False)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise FetchError(f"mvn did not finish fetching {what} in {timeout:.0f} s") from exc
        if result.returncode != 0 or not (scratch / marker).is_file():
            shutil.rmtree(scratch, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise FetchError(
                f"mvn could not fetch {what} (exit {result.returncode}). Check that the "
                f"version exists on Maven Central and that repo.maven.apache.org is reachable "
                f"(proxy settings in ~/.m2/settings.xml).\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        scratch.replace(target)
    return target
