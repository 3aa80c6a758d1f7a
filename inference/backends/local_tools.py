"""Tool calling for a small local model: a prompt that shows the tools, a grammar that only
lets the model write a valid answer, and the parse of what it wrote.

SmolLM2-135M does not reliably follow any tool-call format on its own. Constraining its
output with a JSON-schema grammar (``llama_cpp.LlamaGrammar``) of "a final answer, or a
list of calls to these tools with arguments matching their schemas" makes every output
well-formed by construction: the tool name is one of the offered ones and the arguments
have the declared types and required fields. Whether the model picks the *right* tool
is still the model's quality, not the format's.

The model writes ``{"answer": "..."}`` or ``{"tool_calls": [{"name": ..., "arguments":
{...}}]}``; earlier calls and results are shown to it in the same shape, so the history it
reads looks like what it is asked to write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from clawstream.inference.protocol import (
    MAX_TOOL_CALLS,
    ChatMessage,
    ToolCall,
    ToolChoice,
    ToolFunction,
)

ANSWER_KEY = "answer"
CALLS_KEY = "tool_calls"
DEFAULT_MAX_CALLS = 1
"""Calls one turn may make on the local model. SmolLM2-135M allowed more than one adds a
second call to an unrelated tool with made-up arguments most of the time (measured on the
prompts of ``benchmarks/tool_calls.py``), so parallel calls are opt-in
(``CLAWSTREAM_INFERENCE_LOCAL_MAX_TOOL_CALLS``)."""

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _call_schema(tool: ToolFunction, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def output_schema(
    tools: Sequence[ToolFunction],
    tool_choice: ToolChoice,
    max_calls: int = DEFAULT_MAX_CALLS,
    loose: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The JSON schema the model's whole output must match. ``required`` leaves out the
    answer; ``loose`` names tools whose argument schema the grammar converter could not
    take (their arguments are then any JSON object, and validated by the caller)."""
    calls = [
        _call_schema(tool, _ANY_OBJECT if tool.name in loose else tool.parameters)
        for tool in tools
    ]
    call_list = {
        "type": "object",
        "properties": {
            CALLS_KEY: {
                "type": "array",
                "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
                "minItems": 1,
                "maxItems": max(1, min(max_calls, MAX_TOOL_CALLS)),
            }
        },
        "required": [CALLS_KEY],
        "additionalProperties": False,
    }
    if tool_choice == "required":
        return call_list
    answer = {
        "type": "object",
        "properties": {ANSWER_KEY: {"type": "string"}},
        "required": [ANSWER_KEY],
        "additionalProperties": False,
    }
    return {"anyOf": [answer, call_list]}


def _signature(tool: ToolFunction) -> str:
    properties = tool.parameters.get("properties") or {}
    required = set(tool.parameters.get("required") or ())
    args = []
    for name, schema in properties.items():
        kind = schema.get("type", "any") if isinstance(schema, dict) else "any"
        args.append(f"{name}: {kind}{'' if name in required else ' (optional)'}")
    line = f"- {tool.name}({', '.join(args)})"
    return f"{line}: {tool.description}" if tool.description else line


def tool_instructions(tools: Sequence[ToolFunction], tool_choice: ToolChoice) -> str:
    """What the model is told about the tools, appended to the system prompt."""
    lines = ["You can call these tools:", *(_signature(t) for t in tools), ""]
    lines.append(
        "Reply with JSON only. When a tool can do what the user asks, call it: "
        f'{{"{CALLS_KEY}": [{{"name": "<tool>", "arguments": {{<arguments>}}}}]}}'
    )
    if tool_choice != "required":
        lines.append(
            f'Otherwise, and once you have the tool results, answer: {{"{ANSWER_KEY}": "<text>"}}'
        )
    return "\n".join(lines)


def _as_calls_json(calls: Sequence[ToolCall]) -> str:
    items = []
    for call in calls:
        try:
            arguments: Any = json.loads(call.arguments)
        except ValueError:
            arguments = call.arguments
        items.append({"name": call.name, "arguments": arguments})
    return json.dumps({CALLS_KEY: items})


def prompt_messages(
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolFunction],
    tool_choice: ToolChoice,
) -> list[dict[str, str]]:
    """The conversation as the chat template takes it (role and content only).

    With tools on offer, their description joins the system prompt and the assistant's
    past turns are shown in the JSON the model must write. A tool result keeps the
    ``tool`` role (SmolLM2's ChatML template prints any role) and says which call it
    answers."""
    offered = bool(tools) and tool_choice != "none"
    names = {c.id: c.name for m in messages for c in (m.tool_calls or ())}
    out: list[dict[str, str]] = []
    for message in messages:
        content = message.content
        if message.role == "assistant" and message.tool_calls:
            content = _as_calls_json(message.tool_calls)
        elif message.role == "assistant" and offered:
            content = json.dumps({ANSWER_KEY: content})
        elif message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "", "tool")
            content = f"{name} returned: {content}"
        out.append({"role": message.role, "content": content})
    if offered:
        instructions = tool_instructions(tools, tool_choice)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def _salvage_answer(text: str) -> str | None:
    """The answer of a ``{"answer": "...`` cut off by max_tokens, as far as it got."""
    start = text.find('"', text.find(":") + 1) if text.lstrip().startswith(
        '{"' + ANSWER_KEY) else -1
    if start < 0:
        return None
    body = text[start + 1 :]
    for end in range(len(body), -1, -1):
        try:
            value = json.loads('"' + body[:end].rstrip("\\") + '"')
        except ValueError:
            continue
        return str(value)
    return None


def parse_output(text: str, call_id_prefix: str) -> tuple[str, tuple[ToolCall, ...]]:
    """(answer text, tool calls) from what the grammar let the model write.

    Output cut short by max_tokens is not valid JSON: a cut answer keeps what was written,
    cut calls are dropped (a half-written call cannot be run), and the raw text is the
    answer as a last resort, so the caller always gets something readable."""
    try:
        value = json.loads(text)
    except ValueError:
        salvaged = _salvage_answer(text)
        return (salvaged if salvaged is not None else text), ()
    if isinstance(value, dict) and isinstance(value.get(CALLS_KEY), list):
        calls = tuple(
            ToolCall(
                id=f"{call_id_prefix}_{index}",
                name=item["name"],
                arguments=json.dumps(item.get("arguments", {})),
            )
            for index, item in enumerate(value[CALLS_KEY])
        )
        return "", calls
    if isinstance(value, dict) and isinstance(value.get(ANSWER_KEY), str):
        return value[ANSWER_KEY], ()
    return text, ()
