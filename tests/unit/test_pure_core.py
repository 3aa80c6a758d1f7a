"""The coordinator's core is pure: the same events, time and catalog give byte-identical
outputs, and the flow-control pass over a decision (routing, cutting, degrading) does no
I/O and replays the same way."""

from __future__ import annotations

from clawstream.config import Settings
from clawstream.processors.conversation import Rules, on_request, on_result
from clawstream.processors.flow.coordination import route_and_cut
from clawstream.processors.flow.flags import FlagView
from clawstream.processors.policy import Policy
from clawstream.processors.registry import Registry, register_all
from clawstream.schemas import encode
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.streams.publisher import new_request
from clawstream.streams.topics import ANSWERS, INFERENCE_REQUESTS, TOOL_REQUESTS

RULES = Rules(Policy(), register_all(Registry(), ["clawstream.processors.builtin"]))
SETTINGS = Settings()


def _wire(outputs: list) -> list[bytes]:  # type: ignore[type-arg]
    return [encode(o.schema, o.record) for o in outputs]


def test_a_replay_writes_byte_identical_events_and_commands() -> None:
    req = new_request(agent="researcher", conversation_id="c", text="where are caches?")
    first = on_request(None, None, req, 1000, RULES)
    second = on_request(None, None, req, 1000, RULES)
    assert _wire(first.outputs) == _wire(second.outputs)
    ids = [o.record["event_id"] for o in first.outputs if "event_id" in o.record]
    assert ids and len(set(ids)) == len(ids)
    later = on_request(None, None, req, 1001, RULES)  # another time: other events
    assert _wire(later.outputs) != _wire(first.outputs)


def test_routing_cuts_the_expensive_step_under_degrade_and_answers_degraded() -> None:
    req = new_request(agent="researcher", conversation_id="c", text="where are caches?")
    decision = on_request(None, None, req, 0, RULES)
    routed = route_and_cut(decision, RULES, SETTINGS, FlagView({"degrade": "on"}), 5)
    topics = [o.topic for o in routed.decision.outputs]
    assert TOOL_REQUESTS.name not in topics  # retrieve skipped
    [model] = [o.record for o in routed.decision.outputs if o.topic == INFERENCE_REQUESTS.name]
    assert model["model_call"]["model"] == "small"  # degrade: the smallest pool
    result = {**{k: model[k] for k in ("step_id", "step_index", "step_type", "attempt",
                                         "request_id", "conversation_id", "trace_id",
                                         "issued_at_ms")},
              "status": "ok", "output": "here", "error": None, "worker": "w",
              "started_at_ms": 6, "finished_at_ms": 7, "cache_hit": False, "model": "m",
              "backend": "b", "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                        "cost_usd": 0.0, "saved_tokens": 0,
                                        "saved_cost_usd": 0.0}, "cache": [],
              "tool_calls": [], "finish_reason": None}
    done = on_result(routed.decision.conversation, result, 8, RULES)
    finished = route_and_cut(done, RULES, SETTINGS, FlagView({"degrade": "on"}), 8)
    [answer] = [o.record for o in finished.decision.outputs if o.topic == ANSWERS.name]
    assert answer["status"] == "degraded" and "retrieve skipped" in answer["reason"]
    encode(AGENT_ANSWER, answer)
    assert finished.archive == [("c", {"request_id": req["request_id"],
                                       "user": "where are caches?", "assistant": "here"})]


def test_a_step_issued_event_names_the_pool_its_step_was_routed_to() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    flags = FlagView({"kill.pool.small": "on"})
    routed = route_and_cut(on_request(None, None, req, 0, RULES), RULES, SETTINGS, flags, 3)
    [issued] = [o.record for o in routed.decision.outputs
                if o.record.get("event_type") == "step_issued"]
    [model] = [o.record for o in routed.decision.outputs if o.topic == INFERENCE_REQUESTS.name]
    assert issued["detail"]["pool"] == model["model_call"]["model"] == "large"


def test_routing_replays_the_same_way() -> None:
    req = new_request(agent="chat", conversation_id="c", text="hi")
    flags = FlagView({"kill.pool.small": "on"})
    runs = [route_and_cut(on_request(None, None, req, 0, RULES), RULES, SETTINGS, flags, 3)
            for _ in range(2)]
    assert _wire(runs[0].decision.outputs) == _wire(runs[1].decision.outputs)
    [cmd] = [o.record for o in runs[0].decision.outputs if o.topic == INFERENCE_REQUESTS.name]
    assert cmd["model_call"]["model"] == "large"
