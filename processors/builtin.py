"""The built-in example agents and tools, registered like a team's own module would be."""

from __future__ import annotations

from clawstream.processors.agents import AgentSpec, ModelStep, ToolArguments, ToolStep
from clawstream.processors.flow.recall import Recall
from clawstream.processors.registry import Registry, ToolResources
from clawstream.processors.tools.retrieval import Retriever
from clawstream.schemas.records import AgentRequest


def retrieval_query(request: AgentRequest) -> ToolArguments:
    return {"query": request["text"], "k": 2}


RESEARCHER = AgentSpec(
    name="researcher",
    version="1.1.0",
    system_prompt=(
        "You are a helpful assistant for the clawstream platform. Answer in one or two "
        "short sentences, using the notes when they help."
    ),
    plan=(ToolStep("retrieve", retrieval_query, expensive=True), ModelStep()),
    task_class="research",
)
CHAT = AgentSpec(
    name="chat",
    version="1.1.0",
    system_prompt="You are a helpful assistant. Answer in one or two short sentences.",
    plan=(ModelStep(),),
    cache_ttl_s=120.0,  # chat drifts faster than answers over the fixed corpus
)


def _retriever(resources: ToolResources) -> Retriever:
    return Retriever(resources.embeddings)


def _recall(resources: ToolResources) -> Recall:
    return Recall(resources.redis, resources.settings.context_exchanges)


def register(registry: Registry) -> None:
    registry.add_tool(Retriever.spec, _retriever)
    registry.add_tool(Recall.spec, _recall)
    registry.add_agent(RESEARCHER)
    registry.add_agent(CHAT)
