"""Retry and time-budget policy: how long a step may run, how often it is tried, and when.

Retries are scheduled by the coordinator, not slept on by a worker: a failed attempt
leaves the step pending with a not-before time in the conversation's state, and the
coordinator's sweep re-issues it when due. Nothing waits on the partition in between, so
other conversations on it keep flowing, and the schedule survives a crash (it is state,
recovered from the changelog, not a timer in a process).

The jitter is "full jitter" (a uniform draw from [0, ceiling]) but drawn from a hash of
the step id and attempt instead of a random generator: it still spreads a herd of steps
that failed together, and replaying the same events gives the same schedule.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from clawstream.config import Settings
from clawstream.processors.tools.base import ToolSpec


@dataclass(frozen=True)
class Policy:
    interactive_step_ms: int = 20_000
    batch_step_ms: int = 60_000
    budget_factor: float = 3.0
    model_max_attempts: int = 3
    retry_base_ms: int = 250
    retry_cap_ms: int = 8_000
    context_exchanges: int = 6
    max_request_chars: int = 100_000
    context_exchange_chars: int = 8_000
    conversation_max_steps: int = 64
    conversation_token_budget: int = 200_000
    delegation_max_depth: int = 3
    delegation_max_fanout: int = 64
    delegation_reserve_ms: int = 2000
    delegation_budget_share: float = 0.8
    delegation_grace_ms: int = 5000
    max_model_tokens: int = 1024

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        return cls(
            interactive_step_ms=int(s.interactive_step_timeout_s * 1000),
            batch_step_ms=int(s.batch_step_timeout_s * 1000),
            budget_factor=s.step_budget_factor,
            model_max_attempts=s.model_max_attempts,
            retry_base_ms=s.retry_base_ms,
            retry_cap_ms=s.retry_cap_ms,
            context_exchanges=s.context_exchanges,
            max_request_chars=s.max_request_chars,
            context_exchange_chars=s.context_exchange_chars,
            conversation_max_steps=s.conversation_max_steps,
            conversation_token_budget=s.conversation_token_budget,
            delegation_max_depth=s.delegation_max_depth,
            delegation_max_fanout=s.delegation_max_fanout,
            delegation_reserve_ms=s.delegation_reserve_ms,
            delegation_budget_share=s.delegation_budget_share,
            delegation_grace_ms=s.delegation_grace_ms,
            max_model_tokens=s.model_max_tokens,
        )

    def step_limit_ms(self, lane: str, agent_limit_s: float | None,
                      tool: ToolSpec | None) -> int:
        """The tool's own limit, else the agent's, else the lane's."""
        if tool is not None and tool.timeout_s is not None:
            return int(tool.timeout_s * 1000)
        if agent_limit_s is not None:
            return int(agent_limit_s * 1000)
        return self.interactive_step_ms if lane == "interactive" else self.batch_step_ms

    def budget_ms(self, limit_ms: int) -> int:
        """How long the coordinator waits for a result before it gives the attempt up."""
        return int(limit_ms * self.budget_factor)

    def max_attempts(self, tool: ToolSpec | None) -> int:
        return tool.max_attempts if tool is not None else self.model_max_attempts


def jitter_fraction(step_id: str, attempt: int) -> float:
    digest = hashlib.sha256(f"{step_id}#{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def retry_delay_ms(policy: Policy, step_id: str, failed_attempt: int,
                   retry_after_ms: int | None) -> tuple[int, int]:
    """(delay, ceiling) before the attempt after ``failed_attempt``.

    The ceiling doubles per attempt up to the cap; the delay is a full-jitter draw below it,
    added to the backend's Retry-After: the backend says "not before", the jitter keeps every
    caller told the same Retry-After from coming back in the same instant.
    """
    ceiling = min(policy.retry_cap_ms, policy.retry_base_ms * 2 ** (failed_attempt - 1))
    delay = int(ceiling * jitter_fraction(step_id, failed_attempt))
    return (retry_after_ms or 0) + delay, ceiling
