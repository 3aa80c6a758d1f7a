"""Which code a running stack was started by, so ``up`` never leaves old code serving.

A stack outlives the checkout that started it (``demo`` leaves it up by design). When the
code changes under it, an old worker cannot read the new code's requests and answers
nothing, which looks like a hang to the person who just ran ``up``. ``up`` therefore
stamps the stack with a digest of the package's sources and schemas and, finding another
stamp (or none) on a running stack, restarts the parts that run our code: the workers,
the gateway and the Serve app. Kafka, Redis and Ray keep running, with their data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import clawstream
from clawstream.config import Settings

_STAMP = "code-version"
_SOURCES = (".py", ".avsc")


def current(root: Path | None = None) -> str:
    """A digest of every source and schema file of the package (short, stable)."""
    root = root or Path(clawstream.__file__).parent
    files: list[Path] = []
    # The design's folders are linked into the package: follow the links.
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files += [Path(folder, n) for n in sorted(names) if n.endswith(_SOURCES)]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stamped(settings: Settings) -> str | None:
    """The version the running stack was started with; None when it has no stamp."""
    path = settings.run_dir / _STAMP
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def stamp(settings: Settings, version: str) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / _STAMP).write_text(version + "\n")
