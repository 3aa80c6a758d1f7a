"""Java programs from Maven Central, laid into a cache folder by Maven's dependency plugin.

The machine reaches Maven Central but not the projects' download sites, so Java programs
the stack or the tests run come from there: the Kafka broker and Apache Avro's reference
implementation as a POM's runtime dependency graph (``fetch_libs``), Apicurio Registry as
its runnable tar.gz (``fetch_archive``). The cache lives outside any state dir, so ``down
--purge`` and a fresh test stack cost no second download.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

from clawstream.deploy.local.errors import FetchError
from clawstream.deploy.local.tools import require

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
"""The plugin ``fetch_archive`` runs without a POM (the POMs pin the same version)."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/clawstream`` (default ``~/.cache/clawstream``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clawstream"


def copy_command(mvn: str, pom: Path, properties: Mapping[str, str]) -> list[str]:
    """``mvn`` copying the POM's runtime dependencies; ``properties`` become ``-D`` flags."""
    return [mvn, "-q", "-B", "-f", str(pom), *(f"-D{k}={v}" for k, v in properties.items()),
            "dependency:copy-dependencies"]


def artifact_command(mvn: str, coordinates: str, out_dir: Path) -> list[str]:
    """``mvn`` copying the one artifact ``coordinates`` (``group:artifact:version:type[:
    classifier]``) into ``out_dir``: no POM, and none of the artifact's dependencies."""
    return [mvn, "-q", "-B", f"{DEPENDENCY_PLUGIN}:copy", f"-Dartifact={coordinates}",
            f"-DoutputDirectory={out_dir}"]


def fetch_libs(pom: Path, target: Path, marker: str, properties: Mapping[str, str],
               out_property: str, what: str, *, timeout: float = 900.0) -> Path:
    """The POM's jars in ``target`` (fetched unless ``target/marker`` exists); ``target``.

    ``out_property`` is the POM property naming the output folder.
    """
    def fill(scratch: Path) -> None:
        cmd = copy_command(require("mvn"), pom, {**properties, out_property: str(scratch)})
        _run_mvn(cmd, what, timeout)

    return _fill_once(target, marker, fill, what)


def fetch_archive(coordinates: str, target: Path, marker: str, *,
                  timeout: float = 900.0) -> Path:
    """The tar.gz artifact ``coordinates`` unpacked into ``target`` (fetched unless
    ``target/marker`` exists); ``target``.

    Maven fetches it (through ``~/.m2``, with its proxy settings); Python unpacks it with
    tarfile's ``data`` filter, which refuses members that would land outside ``target``.
    """
    def fill(scratch: Path) -> None:
        download = scratch / ".download"
        _run_mvn(artifact_command(require("mvn"), coordinates, download), coordinates,
                 timeout)
        archives = sorted(download.glob("*.tar.gz"))
        if len(archives) != 1:
            raise FetchError(f"mvn fetched {coordinates} but left no single .tar.gz in "
                             f"{download} ({[a.name for a in archives]})")
        try:
            with tarfile.open(archives[0]) as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise FetchError(f"could not unpack {coordinates} ({exc}): its copy in Maven's "
                             f"local repository (~/.m2/repository) may be damaged; delete "
                             f"it and try again") from exc
        shutil.rmtree(download)

    return _fill_once(target, marker, fill, coordinates)


def _run_mvn(cmd: list[str], what: str, timeout: float) -> None:
    """Run ``cmd``; FetchError with Maven's last lines and what to check if it fails."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                check=False)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"mvn did not finish fetching {what} in {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise FetchError(
            f"mvn could not fetch {what} (exit {result.returncode}). Check that the "
            f"version exists on Maven Central and that repo.maven.apache.org is reachable "
            f"(proxy settings in ~/.m2/settings.xml).\n{tail}")


def _fill_once(target: Path, marker: str, fill: Callable[[Path], None], what: str) -> Path:
    """``target``, filled by ``fill(scratch)`` unless ``target/marker`` exists.

    ``fill`` writes into a scratch folder that is renamed into place only when it finished
    and holds ``marker``, under a file lock, so an interrupted fetch or two processes
    fetching at once never leave a half-filled folder that looks complete.
    """
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).is_file():
            return target
        scratch = target.parent / f"{target.name}.partial-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            fill(scratch)
            if not (scratch / marker).is_file():
                raise FetchError(f"fetching {what} finished without {marker}: is it the "
                                 f"artifact the stack expects?")
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)
        scratch.replace(target)
    return target
