"""The coordinator's handling of one record, as a pure function of the record, the state
the tables hold, the time and the rules: what the live coordinator runs and what
``replay --rebuild`` runs again (:mod:`clawstream.processors.rebuild`), so the two cannot
drift apart.

Left to the caller, because they are I/O: the entrance gate's verdict for a new request
(Redis), metrics, the recall archive, and writing the tables.
"""

from __future__ import annotations

from typing import cast

from clawstream.config import Settings
from clawstream.processors.conversation import (
    Decision,
    Rules,
    keep_within,
    on_cancel,
    on_request,
    on_result,
    on_wakeup,
)
from clawstream.processors.flow import coordination
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.state import Conversation, DedupEntry
from clawstream.processors.validation import Rejection
from clawstream.schemas.names import AGENT_REQUEST, CANCEL, STEP_RESULT
from clawstream.schemas.records import AgentRequest, Cancel, StepResult, WireRecord


def decide(name: str, record: WireRecord, conv: Conversation | None,
           dedup: DedupEntry | None, now: int, rules: Rules, source: str = "",
           rejection: Rejection | None = None) -> Decision:
    """The rules' decision on a request, step result, cancel or wake-up (``name``, the
    record's schema). For a request: ``dedup`` its fresh dedup entry, ``source`` where it
    was read, ``rejection`` the gate's verdict. A step result also counts toward the
    conversation's lifetime spend, whatever the rules make of it."""
    if name == AGENT_REQUEST:
        return on_request(conv, dedup, cast(AgentRequest, record), now, rules, source,
                          rejection)
    if name == STEP_RESULT:
        result = cast(StepResult, record)
        coordination.count_result(conv, result)
        return on_result(conv, result, now, rules)
    if name == CANCEL:
        return on_cancel(conv, cast(Cancel, record), now, rules)
    return on_wakeup(conv, now, rules)  # a wake-up: its only content is the time


def settle(decision: Decision, rules: Rules, settings: Settings, flags: FlagView, now: int
           ) -> coordination.Routed:
    """Flow control over the decision (route, cut, degrade), then the state-size bound:
    what is sent and stored, and the exchanges for the recall archive."""
    routed = coordination.route_and_cut(decision, rules, settings, flags, now)
    return coordination.Routed(keep_within(routed.decision, settings.max_state_bytes, now,
                                           rules), routed.archive)
