"""The built-in agents and tools: examples written with the same API a team uses
(:mod:`clawstream.processors.api`), registered like a team's module.

``researcher`` and ``chat`` follow fixed plans (retrieve, then answer; answer);
``assistant`` lets the model decide which tools to call.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from clawstream.processors.agents import ModelStep, ToolArguments, ToolStep
from clawstream.processors.api import Agent, tool
from clawstream.processors.flow.recall import Recall
from clawstream.processors.registry import Registry, ToolResources
from clawstream.processors.tools.retrieval import Retriever
from clawstream.schemas.records import AgentRequest

_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


Arithmetic = Annotated[str, Field(pattern=r"^[0-9][0-9+*/%(). -]{0,79}$",
                                  description="digits and + - * / // % ** ( ) only")]
"""The grammar of the local model follows the pattern: it can only write arithmetic."""


@tool(cache_params=("expression",), cache_ttl_s=900)
def calculate(expression: Arithmetic) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses,
    e.g. "(17 + 4) * 3". Use it for any arithmetic instead of guessing."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            if isinstance(node.op, ast.Pow) and abs(value(node.right)) > 100:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](value(node.left),
                                             value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:80]}")

    try:
        result = value(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        return f"cannot evaluate {expression!r}: {exc}"
    return str(int(result) if float(result).is_integer() else round(result, 10))


def retrieval_query(request: AgentRequest) -> ToolArguments:
    return {"query": request["text"], "k": 2}


RESEARCHER = Agent(
    name="researcher", version="1.1.0", model="research", max_tokens=64,
    instructions="You are a helpful assistant for the clawstream platform. Answer in one or "
                 "two short sentences, using the notes when they help.",
    plan=(ToolStep("retrieve", retrieval_query, expensive=True), ModelStep()),
)
CHAT = Agent(
    name="chat", version="1.1.0", max_tokens=64, plan=(ModelStep(),),
    instructions="You are a helpful assistant. Answer in one or two short sentences.",
    cache_ttl_s=120.0,  # chat drifts faster than answers over the fixed corpus
)
ASSISTANT = Agent(
    name="assistant", version="1.0.0", max_steps=6, max_tokens=128,
    instructions="You are a helpful assistant. Call a tool when it helps: calculate for "
                 "arithmetic, retrieve for questions about the clawstream platform. Then "
                 "answer in one or two short sentences.",
    tools=[calculate, "retrieve"],
)


def _retriever(resources: ToolResources) -> Retriever:
    return Retriever(resources.embeddings)


def _recall(resources: ToolResources) -> Recall:
    return Recall(resources.redis, resources.settings.context_exchanges)


def register(registry: Registry) -> None:
    registry.add_tool(Retriever.spec, _retriever)
    registry.add_tool(Recall.spec, _recall)
    for agent in (RESEARCHER, CHAT, ASSISTANT):
        registry.add(agent)
