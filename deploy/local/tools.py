"""Find the external programs the stack runs, or say exactly what to install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from clawstream.deploy.local.errors import MissingToolError

JAVA_MIN = 17
INSTALL_HINTS = {
    "java": "apt-get install -y openjdk-17-jre-headless",
    "mvn": "apt-get install -y maven",
    "redis-server": "apt-get install -y redis-server",
    "prometheus": "apt-get install -y --no-install-recommends prometheus (or set "
                  "CLAWSTREAM_PROMETHEUS_ENABLED=false)",
    "ray": "pip install 'ray[serve]' (it is a dependency of clawstream: pip install -e .)",
}


def require(program: str) -> str:
    """Absolute path of ``program`` on PATH, or MissingToolError naming the install command."""
    found = shutil.which(program)
    if found is None:
        hint = INSTALL_HINTS.get(program, f"install {program}")
        raise MissingToolError(f"`{program}` is not on PATH; install it with: {hint}")
    return found


def venv_script(program: str) -> str:
    """A console script of this interpreter's environment (e.g. ``ray``), else from PATH.

    Preferring the script next to ``sys.executable`` keeps the stack on the same Ray version
    as the code that will connect to it, even when PATH has another one first.
    """
    candidate = Path(sys.executable).parent / program
    if candidate.is_file():
        return str(candidate)
    return require(program)


def parse_java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output ("1.8.0_x" -> 8, "17.0.15" -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def require_java(minimum: int = JAVA_MIN) -> str:
    """Path of a ``java`` of at least ``minimum``; MissingToolError otherwise."""
    java = require("java")
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    major = parse_java_major(out.stderr + out.stdout)
    if major is None or major < minimum:
        raise MissingToolError(
            f"`{java}` is Java {major if major is not None else '(unknown version)'}; the Kafka "
            f"broker and the schema registry need Java {minimum}+. Install it with: "
            f"{INSTALL_HINTS['java']}"
        )
    return java
