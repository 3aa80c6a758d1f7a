"""The composition root: importing a processor module creates nothing; two workers can be
built in one process, each with its own app, tables, agents and registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clawstream.config import Settings
from clawstream.processors.agents import AgentSpec, ModelStep, ToolStep
from clawstream.processors.registry import Registry, RegistryError, register_all
from clawstream.processors.worker import build_worker

MODULES = ["app", "coordinator", "executors", "emit", "conversation", "lifecycle", "worker",
           "main", "faust_fence", "registry", "builtin"]


def test_importing_the_processors_has_no_side_effects(tmp_path: Path) -> None:
    probe = ("import importlib, threading\n"
             f"for m in {MODULES!r}: importlib.import_module('clawstream.processors.' + m)\n"
             "assert threading.active_count() == 1, threading.enumerate()\n")
    env = {"CLAWSTREAM_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=tmp_path, env=env)
    assert not (tmp_path / "state").exists()


def test_two_workers_in_one_process(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, agent_modules=["fixtures.faults"])
    one = build_worker(settings, "worker-a")
    two = build_worker(settings, "worker-b")
    assert one.app is not two.app
    assert one.coordinator is not None and two.coordinator is not None
    assert one.coordinator.conversations is not two.coordinator.conversations
    assert {"clawstream.coordinate", "clawstream.admit_batch", "clawstream.execute_tools",
            "clawstream.dispatch_inference"} <= set(one.app.agents)
    assert "fault-saga" in one.registry.agent_names
    assert {"retrieve", "recall", "fault_effect"} <= set(one.executors.tools)
    assert not (tmp_path / "faust").exists()  # nothing on disk until the worker runs


def test_a_team_module_adds_its_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    (tmp_path / "teamagents.py").write_text(
        "from clawstream.processors.agents import AgentSpec, ModelStep\n"
        "def register(registry):\n"
        "    registry.add_agent(AgentSpec(name='helpdesk', version='2', system_prompt='Hi.',"
        " plan=(ModelStep(),)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    worker = build_worker(Settings(state_dir=tmp_path, agent_modules=["teamagents"]), "w")
    assert worker.registry.agent("helpdesk") is not None


def test_bad_agent_modules_fail_at_start_with_a_clear_error() -> None:
    with pytest.raises(RegistryError, match=r"cannot import agent module 'no\.such\.module'"):
        register_all(Registry(), ["no.such.module"])
    with pytest.raises(RegistryError, match="has no register"):
        register_all(Registry(), ["json"])
    registry = Registry()
    registry.add_agent(AgentSpec(name="a", version="1", system_prompt="", plan=(ModelStep(),)))
    with pytest.raises(RegistryError, match="registered twice"):
        registry.add_agent(AgentSpec(name="a", version="1", system_prompt="",
                                     plan=(ModelStep(),)))
    registry.add_agent(AgentSpec(name="b", version="1", system_prompt="",
                                 plan=(ToolStep("nope", dict),)))
    with pytest.raises(RegistryError, match="agent 'b' uses unknown tool 'nope'"):
        registry.check()
