"""Settings as ``CLAWSTREAM_*`` environment variables for the processes the stack starts.

A worker started by ``up`` must see exactly the settings ``up`` was called with (test
stacks override ports and the state dir in code, not only in the environment), so the
settings object is written out field by field on top of the inherited environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from clawstream.config import Settings, upstream_models

PREFIX = "CLAWSTREAM_"


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return json.dumps(value, default=_jsonable)


def _jsonable(value: object) -> object:
    """Nested settings models (e.g. model pools) as the JSON their env variable parses."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    return str(value)


# Whose secrets a process uses is the spawner's choice per child, never inherited.
IDENTITY = ("role", "credentials_file", "kafka_username", "kafka_password", "redis_username",
            "redis_password")


def settings_env(settings: Settings) -> dict[str, str]:
    """``CLAWSTREAM_<FIELD>`` for every set field of ``settings`` (None fields are left out),
    but the identity fields."""
    env: dict[str, str] = {}
    for field in type(settings).model_fields:
        if field in IDENTITY:
            continue
        value = getattr(settings, field)
        if value is not None:
            env[PREFIX + field.upper()] = _encode(value)
    return env


def isolated_env(state_dir: Path, ports: Mapping[str, int]) -> dict[str, str]:
    """Environment for a side stack (tests, benchmarks) that must not touch the dev stack.

    ``CLAWSTREAM_PORT_OFFSET`` shifts every port, so two checkouts (git worktrees) can run
    their test suites or benchmarks at the same time on one machine.
    """
    offset = int(os.environ.get("CLAWSTREAM_PORT_OFFSET", "0"))
    env = {f"{PREFIX}{name.upper()}": str(port + offset) for name, port in ports.items()}
    env[f"{PREFIX}STATE_DIR"] = str(state_dir)
    # Its owner (a test session, a benchmark) creates it, reads every topic and key and
    # breaks things: the admin. Each component it starts still runs as its own role.
    env[f"{PREFIX}ROLE"] = "admin"
    return env


def upstream_key_envs(settings: Settings) -> set[str]:
    """The environment variables that hold the upstream model servers' API keys."""
    return {spec.api_key_env for spec in upstream_models(settings.pools).values()
            if spec.api_key_env}


def child_env(settings: Settings, extra: Mapping[str, str] | None = None, *,
              role: str) -> dict[str, str]:
    """The inherited environment, overlaid with ``settings`` and then ``extra``; the child
    acts as ``role`` with that role's own secret file (least privilege: never the
    spawner's)."""
    withheld = {PREFIX + f.upper() for f in IDENTITY}
    if role != "inference":  # the upstream models' API keys reach only the model servers
        withheld |= upstream_key_envs(settings)
    env = {k: v for k, v in os.environ.items() if k not in withheld}
    env.update(settings_env(settings))
    env[f"{PREFIX}ROLE"] = role
    if extra:
        env.update(extra)
    return env
