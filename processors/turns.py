"""What a request's next turn is: the commands the coordinator issues, built from its
agent's declaration and the request's state. Pure functions, called by the rules in
:mod:`clawstream.processors.conversation` (which sequence them and never the reverse).

Two kinds of agent:

- a **fixed plan**: each turn is the plan's next step (a tool with arguments taken from
  the request, or a model call over the context and the tools' notes);
- a **deciding agent**: each turn is a model call that sees the agent's tools (OpenAI's
  ``tools`` format) and a transcript (instructions, the conversation's recent exchanges,
  the question, then its own earlier calls and their results); its answer is either final
  text or tool calls, and the calls of one turn run in parallel as steps of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from clawstream.processors.agents import (
    DELEGATE,
    AgentSpec,
    Catalog,
    ModelStep,
    ToolStep,
)
from clawstream.processors.caching.control import control_for_request
from clawstream.processors.canary.rule import Route
from clawstream.processors.keys import canonical_json
from clawstream.processors.policy import Policy
from clawstream.processors.records import step_command
from clawstream.processors.state import ActiveRequest, Conversation, StepRun
from clawstream.processors.validation import TRUTHY
from clawstream.schemas.records import (
    AgentRequest,
    FunctionCall,
    FunctionSpec,
    Message,
    ModelCall,
    StepCommand,
    ToolCall,
    message,
)

MAX_TOOL_OUTPUT_CHARS = 16_000
"""A tool's output as the model reads it back (the step's result keeps it whole)."""


@dataclass(frozen=True)
class Rules:
    """What the rules consult besides the state, the event and the time: the retry and
    budget policy, the catalog of agents and tools, and the routing rules of the control
    topic (which version new conversations get). Passed in, never read from globals, so
    the same events replay to the same outputs on any worker."""

    policy: Policy
    catalog: Catalog
    routes: Mapping[str, Route] = field(default_factory=dict)
    """Agent name -> its routing rule (canary), from the flags when the event is handled."""


@dataclass(frozen=True)
class PlanError:
    """The agent's plan raised while building a step's command for this request."""

    step: str
    error_class: str
    message: str


def new_run(cmd: StepCommand) -> StepRun:
    return {"cmd": cmd, "retry_at_ms": None, "attempts": [], "output": None,
            "tool_calls": []}


def active_agent(catalog: Catalog, active: ActiveRequest) -> AgentSpec | None:
    """The version of its agent the request runs (chosen when it started); the live
    version if that one is no longer deployed."""
    name = active["request"]["agent"]
    return catalog.agent(name, active.get("agent_version")) or catalog.agent(name)


def context_kept(agent: AgentSpec, req: AgentRequest, policy: Policy) -> int:
    """Exchanges the prompt keeps: the request's ``context_exchanges`` option (an eval
    measuring trimming), else the agent's own setting, else the runtime's."""
    wanted = req["options"].get("context_exchanges")
    return int(wanted) if wanted else agent.context_exchanges or policy.context_exchanges


def deciding(agent: AgentSpec) -> bool:
    """The model decides (tools, a loop), as opposed to following a fixed plan."""
    return agent.plan is None


def prompt_version(agent: AgentSpec) -> str:
    """Names the agent and its version: a new version never reuses the old one's cached
    outputs, and a dead letter's prompt signature tells the versions apart."""
    return f"{agent.name}@{agent.version}/{agent.prompt_version}"


def context(agent: AgentSpec, conv: Conversation, req: AgentRequest, policy: Policy
            ) -> list[Message]:
    """Instructions, then the client's own chat if it sent one, else the conversation's
    last exchanges and the question. A pass-through call is the client's chat as sent."""
    if agent.passthrough:
        return list(req["messages"]) or [message("user", req["text"])]
    messages = [message("system", agent.system_prompt)]
    if req["messages"]:
        return messages + [m for m in req["messages"] if m["role"] != "system"]
    kept = context_kept(agent, req, policy)
    for ex in conv["exchanges"][-kept:]:
        messages += [message("user", ex["user"]), message("assistant", ex["assistant"])]
    return [*messages, message("user", req["text"])]


def _with_notes(messages: list[Message], notes: str | None) -> list[Message]:
    """A plan's model step: the earlier tool steps' notes go with the question."""
    if not notes:
        return messages
    *head, question = messages
    return [*head, {**question,
                    "content": f"Notes:\n{notes}\n\nQuestion: {question['content']}"}]


def plan_step(conv: Conversation, active: ActiveRequest, agent: AgentSpec, now_ms: int,
              rules: Rules) -> StepCommand | PlanError:
    """The fixed plan's step at ``active["step_index"]``."""
    assert agent.plan is not None
    req, index = active["request"], active["step_index"]
    step = agent.plan[index]
    cache = control_for_request(req["options"], agent.cache_ttl_s)
    if isinstance(step, ToolStep):
        spec = rules.catalog.tool_spec(step.tool)
        try:  # the plan is the team's code: whatever it raises fails this request only
            arguments_json = canonical_json(step.arguments(req))
        except Exception as exc:
            return PlanError(step.tool, type(exc).__name__, str(exc)[:500] or repr(exc))
        tool: ToolCall = {"name": step.tool, "version": spec.version if spec else "?",
                          "arguments_json": arguments_json,
                          "mutating": bool(spec and spec.mutating), "call_id": None}
        limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
        return step_command(req, active["run"], index, "tool", now_ms, limit, None, tool,
                            cache=cache)
    assert isinstance(step, ModelStep)  # a FanOut step is built by processors/delegation
    call = _model_call(agent, _with_notes(context(agent, conv, req, rules.policy),
                                          active["notes"]), [], streams(req))
    limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, None)
    return step_command(req, active["run"], index, "model", now_ms, limit, call, None,
                        cache=cache)


def streams(req: AgentRequest) -> bool:
    """Whether the client streams the answer (the ``stream`` option): the request's model
    steps then publish their output as it is generated."""
    return req["options"].get("stream", "").strip().lower() in TRUTHY


def _model_call(agent: AgentSpec, messages: list[Message], tools: list[FunctionSpec],
                stream: bool) -> ModelCall:
    return {"model": "default", "prompt_version": prompt_version(agent),
            "messages": messages, "max_tokens": agent.max_tokens,
            "temperature": agent.temperature, "tools": tools,
            "tool_choice": "auto" if tools else None, "top_p": None, "stop": [], "seed": None,
            "stream": stream}


def functions(agent: AgentSpec, req: AgentRequest, catalog: Catalog) -> list[FunctionSpec]:
    """The tools the model may call this turn: the agent's own, or for a pass-through
    call the client's."""
    if agent.passthrough:
        return list(req["tools"])
    specs = [catalog.tool_spec(name) for name in agent.tools]
    tools: list[FunctionSpec] = [{"name": s.name, "description": s.description,
                                  "parameters_json": s.parameters_json or '{"type": "object"}'}
                                 for s in specs if s is not None]
    return tools + ([delegate_function(agent, catalog)] if agent.subagents else [])


def delegate_function(agent: AgentSpec, catalog: Catalog) -> FunctionSpec:
    """The ``delegate`` function: one function for all sub-agents, the agent named by an
    enum (a grammar-constrained local model can only name a declared one), each described
    by its own description. Several calls in one turn run in parallel."""
    about = []
    for sub in agent.subagents:
        spec = catalog.agent(sub.agent)
        text = (spec.description or spec.system_prompt) if spec else ""
        about.append(f"- {sub.agent}: {' '.join(text.split())[:300]}")
    parameters = {
        "type": "object",
        "properties": {
            "agent": {"type": "string", "enum": [s.agent for s in agent.subagents],
                      "description": "The sub-agent to hand the task to."},
            "task": {"type": "string", "description": "What it should do, self-contained: "
                     "it sees nothing else of this conversation."}},
        "required": ["agent", "task"], "additionalProperties": False}
    return {"name": DELEGATE,
            "description": "Hand a task to a sub-agent; its answer comes back as this call's "
                           "result. Calls made in one turn run in parallel. Sub-agents:\n"
                           + "\n".join(about),
            "parameters_json": canonical_json(parameters)}


def client_sampling(call: ModelCall, options: Mapping[str, str], max_tokens_cap: int) -> None:
    """A governed call samples as its client asked (the options the gateway set, checked by
    :func:`~clawstream.processors.validation.option_problem`); ``max_tokens`` at most the
    cap."""
    if "max_tokens" in options:
        call["max_tokens"] = min(int(options["max_tokens"]), max_tokens_cap)
    if "temperature" in options:
        call["temperature"] = float(options["temperature"])
    if "top_p" in options:
        call["top_p"] = float(options["top_p"])
    if "stop" in options:
        call["stop"] = [str(s) for s in json.loads(options["stop"])]
    if "seed" in options:
        call["seed"] = int(options["seed"])


def model_turn(active: ActiveRequest, agent: AgentSpec, now_ms: int, rules: Rules
               ) -> StepCommand:
    """A deciding agent's next model call, over its transcript so far."""
    req = active["request"]
    call = _model_call(agent, list(active["transcript"]), functions(agent, req, rules.catalog),
                       streams(req))
    if agent.passthrough:
        client_sampling(call, req["options"], rules.policy.max_model_tokens)
    limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, None)
    return step_command(req, active["run"], active["step_index"], "model", now_ms, limit,
                        call, None, cache=control_for_request(req["options"],
                                                              agent.cache_ttl_s))


def tool_turn(active: ActiveRequest, agent: AgentSpec, calls: list[FunctionCall],
              now_ms: int, rules: Rules) -> list[StepRun]:
    """One step per tool call the model decided, in its order (see :func:`tool_run`)."""
    return [tool_run(active, agent, call, index, now_ms, rules)
            for index, call in enumerate(calls)]


def tool_run(active: ActiveRequest, agent: AgentSpec, call: FunctionCall, index: int,
             now_ms: int, rules: Rules) -> StepRun:
    """The step of the turn's call number ``index``. A call the runtime can refuse at once
    (a tool the agent does not have, arguments that are not a JSON object) is answered at
    once: its result is the error, which the model reads and can correct."""
    req = active["request"]
    spec = rules.catalog.tool_spec(call["name"]) if call["name"] in agent.tools else None
    arguments = json_object(call["arguments_json"])
    names = [*agent.tools, *([DELEGATE] if agent.subagents else [])]
    problem = (f"unknown tool {call['name']!r}; the tools are: {', '.join(names)}"
               if spec is None else None if arguments is not None else
               f"the arguments of {call['name']} are not a JSON object: "
               f"{call['arguments_json'][:200]!r}")
    tool: ToolCall = {"name": call["name"], "version": spec.version if spec else "?",
                      "arguments_json": canonical_json(arguments or {}),
                      "mutating": bool(spec and spec.mutating), "call_id": call["id"]}
    limit = rules.policy.step_limit_ms(req["lane"], agent.step_timeout_s, spec)
    cmd = step_command(req, active["run"], active["step_index"] + index, "tool", now_ms,
                       limit, None, tool,
                       cache=control_for_request(req["options"], agent.cache_ttl_s))
    run = new_run(cmd)
    if problem is not None:
        run["output"] = f"error: {problem}"
    return run


def json_object(text: str) -> dict[str, object] | None:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tool_results(runs: list[StepRun]) -> list[Message]:
    """The turn's tool messages, one per call, in the order the model made them."""
    return [message("tool", (run["output"] or "")[:MAX_TOOL_OUTPUT_CHARS],
                    tool_call_id=run["cmd"]["tool_call"]["call_id"]
                    if run["cmd"]["tool_call"] else None,
                    name=DELEGATE if run["cmd"]["step_type"] == "agent" else
                    run["cmd"]["tool_call"]["name"] if run["cmd"]["tool_call"] else None)
            for run in runs]


def so_far(active: ActiveRequest) -> str:
    """What a deciding agent has when a limit stops it: its last words, else the last
    results its tools returned."""
    for msg in reversed(active["transcript"]):
        if msg["role"] == "assistant" and msg["content"].strip():
            return msg["content"].strip()
    outputs = [m["content"] for m in active["transcript"] if m["role"] == "tool"]
    if outputs:
        return "Partial results: " + " | ".join(o[:500] for o in outputs[-4:])
    return active["last_output"]
