"""Fault-injecting tools and agents: TEST AND BENCHMARK FIXTURES, not product tools.

They exist so the reliability contracts can be proven on the real stack by breaking
things: a tool that fails a given number of attempts, one that hangs past its budget, a
mutating tool whose side effect is counted in Redis (with its compensation), one that
always fails, one that wedges the whole worker. They are registered only when
``CLAWSTREAM_FAULT_INJECTION`` is on, which the test and benchmark stacks set and a
production worker never does.

The tests drive them through the request: ``options["args<i>"]`` holds the JSON arguments
of step ``i`` of a fault agent's plan.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis

from clawstream.processors.agents import AgentSpec, ModelStep, Record, ToolStep
from clawstream.processors.tools.base import ToolContext, ToolError, ToolSpec

# Their outcome depends on the attempt, not only the arguments: never served from the cache.
FLAKY = ToolSpec(name="fault.flaky", max_attempts=2, cache_ttl_s=0)
HANG = ToolSpec(name="fault.hang", max_attempts=2, timeout_s=1.0, cache_ttl_s=0)
EFFECT = ToolSpec(name="fault.effect", mutating=True, max_attempts=3, compensation="fault.undo")
UNDO = ToolSpec(name="fault.undo", mutating=True, max_attempts=3)
FAIL = ToolSpec(name="fault.fail", max_attempts=2, cache_ttl_s=0)
FREEZE = ToolSpec(name="fault.freeze", max_attempts=2, cache_ttl_s=0)
FAULT_SPECS = (FLAKY, HANG, EFFECT, UNDO, FAIL, FREEZE)

# The external system the mutating fault tools change: counters in Redis.
EFFECTS_KEY = "fault:effects:{counter}"
CALLS_KEY = "fault:calls:{counter}"
APPLIED_KEY = "fault:applied:{step_id}"
UNDONE_KEY = "fault:undone:{counter}"
STARTED_KEY = "fault:started:{counter}"
RELEASE_KEY = "fault:release:{counter}"
FROZEN_KEY = "fault:frozen:{counter}"

# The "external system" honours idempotency keys, as payment APIs do: the same key applies
# the effect once, atomically with the record that it did.
_APPLY_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  return redis.call('INCR', KEYS[2])
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""


class FlakyTool:
    """Fails its first ``fail_attempts`` attempts (retryable), then answers ``output``.

    With ``fail_until_key`` it fails instead until that Redis key exists: a dependency that
    is down until an operator fixes it (then a redrive succeeds).
    """

    spec = FLAKY

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        until_key = arguments.get("fail_until_key")
        if until_key:
            failing = not await self._redis.exists(str(until_key))
        else:
            failing = ctx.attempt <= int(arguments.get("fail_attempts", 1))
        if failing:
            raise ToolError(f"injected failure on attempt {ctx.attempt}",
                            retry_after_s=arguments.get("retry_after_s"))
        return str(arguments.get("output", f"ok on attempt {ctx.attempt}"))


class HangTool:
    """Ignores its 1 s limit on the first ``hang_attempts`` attempts: hangs ``hang_s``."""

    spec = HANG

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        if ctx.attempt <= int(arguments.get("hang_attempts", 1)):
            await asyncio.sleep(float(arguments["hang_s"]))  # the fault: a stuck call
        return f"answered by attempt {ctx.attempt}"


class FailTool:
    """Always fails: ``retryable`` (default true) decides whether it is retried first."""

    spec = FAIL

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolError(str(arguments.get("message", "injected permanent failure")),
                        retryable=bool(arguments.get("retryable", True)))


class FreezeTool:
    """Wedges the whole worker the first time it runs for ``counter``: a synchronous call
    that does not return (as a stuck client library would) blocks the event loop, so
    nothing of the worker moves any more. Later calls answer at once."""

    spec = FREEZE

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        counter = str(arguments["counter"])
        if await self._redis.set(FROZEN_KEY.format(counter=counter), ctx.step_id, nx=True):
            await self._redis.rpush(STARTED_KEY.format(counter=counter), ctx.step_id)
            time.sleep(float(arguments.get("freeze_s", 600)))  # the fault: a wedged worker
        return f"answered by attempt {ctx.attempt}"


class EffectTool:
    """Adds one to ``counter`` once per idempotency key; counts every call separately.

    With ``hold`` it stops mid-call after applying the effect, until the test sets the
    release key, so a test can SIGKILL the worker inside a mutating call.
    """

    spec = EFFECT

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._apply = redis.register_script(_APPLY_ONCE)

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        counter = str(arguments["counter"])
        await self._redis.incr(CALLS_KEY.format(counter=counter))
        value = await self._apply(keys=[APPLIED_KEY.format(step_id=ctx.step_id),
                                        EFFECTS_KEY.format(counter=counter)])
        if arguments.get("hold"):
            await self._redis.rpush(STARTED_KEY.format(counter=counter), ctx.step_id)
            while not await self._redis.exists(RELEASE_KEY.format(counter=counter)):
                await asyncio.sleep(0.05)  # the stuck call; the test kills us here
        return json.dumps({"counter": counter, "value": int(value)})


class UndoTool:
    """Compensation of EffectTool: records which step it undid, in order, once per key."""

    spec = UNDO

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        original = arguments["arguments"]
        counter = str(original["counter"])
        if await self._redis.set(APPLIED_KEY.format(step_id=ctx.step_id), "1", nx=True):
            await self._redis.decr(EFFECTS_KEY.format(counter=counter))
            await self._redis.rpush(UNDONE_KEY.format(counter=counter),
                                    str(original.get("label", "")))
        return f"undid {original.get('label', counter)}"


def fault_tools(redis: aioredis.Redis) -> list[Any]:
    return [FlakyTool(redis), HangTool(), FailTool(), EffectTool(redis), UndoTool(redis),
            FreezeTool(redis)]


def _step_args(index: int) -> Any:
    def arguments(request: Record) -> Record:
        return dict(json.loads(request["options"].get(f"args{index}", "{}")))
    return arguments


def _agent(name: str, *steps: Any, step_timeout_s: float | None = None) -> AgentSpec:
    return AgentSpec(name=name, version="test", system_prompt="Answer in one short sentence.",
                     plan=tuple(steps), step_timeout_s=step_timeout_s)


FAULT_AGENTS: dict[str, AgentSpec] = {
    agent.name: agent
    for agent in (
        _agent("fault-flaky", ToolStep("fault.flaky", _step_args(0))),
        _agent("fault-hang", ToolStep("fault.hang", _step_args(0))),
        _agent("fault-fail", ToolStep("fault.fail", _step_args(0))),
        _agent("fault-freeze", ToolStep("fault.freeze", _step_args(0))),
        _agent("fault-effect", ToolStep("fault.effect", _step_args(0))),
        _agent("fault-saga", ToolStep("fault.effect", _step_args(0)),
               ToolStep("fault.effect", _step_args(1)), ToolStep("fault.fail", _step_args(2))),
        _agent("fault-model", ModelStep()),
    )
}
