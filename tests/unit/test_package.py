"""The package's shape: one import root, layers that import downward only, no cycles, and
an install that ships exactly one top-level name."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = "clawstream"
# The top-level folders and the package names they are linked in as (clawstream/<folder>).
FOLDERS = {"clawstream": "clawstream", "schemas": "clawstream.schemas",
           "streams": "clawstream.streams", "processors": "clawstream.processors",
           "inference": "clawstream.inference", "gateway": "clawstream.gateway",
           "deploy": "clawstream.deploy"}
LAYERS = {"clawstream.config": 0, "clawstream.schemas": 1, "clawstream.streams": 2,
          "clawstream.inference": 3, "clawstream.processors": 3, "clawstream.gateway": 4,
          "clawstream.deploy": 5, "clawstream.cli": 6}
SIBLING_IMPORTS = {("clawstream.processors", "clawstream.inference")}
"""Same-layer imports that are allowed: the dispatcher is a client of the inference app."""
OUTSIDE = ("schemas", "streams", "processors", "inference", "gateway", "deploy", "benchmarks",
           "tests", "fixtures")


def modules() -> Iterator[tuple[str, Path]]:
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if folder == "clawstream" and parts and parts[0] in (
                    "schemas", "streams", "processors", "inference", "gateway", "deploy"):
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            yield name, path


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (lazy imports in functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import module`` depends on the module, not on the package's
            # __init__ (which may itself import that module).
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES
            found.update(submodules or {node.module})
    return found


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, layer in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    return None


MODULES = {name for name, _ in modules()}
GRAPH = {name: imports_of(path) for name, path in modules()}


def test_the_folders_are_linked_into_the_package() -> None:
    for folder, package in FOLDERS.items():
        if folder != ROOT:
            link = REPO / ROOT / package.split(".")[1]
            assert link.is_symlink() and link.resolve() == REPO / folder


def test_every_import_goes_through_the_root() -> None:
    bare = sorted(f"{name} imports {imp}" for name, imps in GRAPH.items() for imp in imps
                  if imp.split(".")[0] in OUTSIDE)
    assert not bare


def test_layers_import_downward_only() -> None:
    upward = []
    for name, imps in GRAPH.items():
        own = layer_of(name)
        if own is None:  # clawstream/__init__.py
            continue
        for imp in imps:
            other = layer_of(imp)
            if other is None or other[0] == own[0]:
                continue
            if other[1] > own[1] or (other[1] == own[1]
                                     and (own[0], other[0]) not in SIBLING_IMPORTS):
                upward.append(f"{name} ({own[0]}) imports {imp} ({other[0]})")
    assert not sorted(upward)


def test_no_import_cycles() -> None:
    graph = {name: {imp for imp in imps if imp in GRAPH and imp != name}
             for name, imps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles


@pytest.mark.timeout(180)
def test_an_install_ships_one_top_level_package(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: the build writes build/ beside the sources
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", ".clawstream*", "__pycache__", ".*_cache"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, cwd=tmp_path)
    top = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert top - {"bin"} == {ROOT}
    assert (target / ROOT / "schemas" / "avro" / "clawstream.AgentRequest.avsc").is_file()
    assert not (target / ROOT / "benchmarks").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import clawstream.streams.publisher as p, clawstream.config as c; "
             "print(p.__file__); print(c.Settings().state_dir)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, check=True,
                         capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items()
                                 if not k.startswith("CLAWSTREAM_")},
                              "PYTHONPATH": str(target)}).stdout.splitlines()
    assert Path(out[0]).is_relative_to(target)
    assert not Path(out[1]).is_relative_to(target)


def test_no_two_test_modules_share_a_name() -> None:
    # pytest imports test modules by basename (no packages under tests/): two files with
    # one name stop the whole suite at collection.
    names = [p.name for p in (Path(__file__).parents[1]).rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
