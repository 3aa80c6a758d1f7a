"""``clawstream replay --rebuild CONVERSATION``: the coordinator's rules run again over a
conversation's events, and the state they arrive at compared with the live tables.

What is compared: the conversation's state (conversations table), its requests' dedup
entries (request_dedup table), both as their changelogs hold them, and the status each
request was answered with (answers topic). Exit 0 when they agree (times aside: see
:mod:`clawstream.processors.rebuild`), 1 when they do not, with every difference listed.
"""

from __future__ import annotations

from typing import Any, cast

from rich.console import Console
from rich.table import Table

from clawstream.cli.reading import read_with_progress
from clawstream.config import Settings
from clawstream.processors.conversation import Rules
from clawstream.processors.policy import Policy
from clawstream.processors.rebuild import Difference, differences, flag_changes, rebuild
from clawstream.processors.registry import load_registry
from clawstream.schemas.names import AGENT_ANSWER
from clawstream.schemas.records import AgentAnswer
from clawstream.streams.masking import mask_text
from clawstream.streams.tables import table_values
from clawstream.streams.topics import (
    CONTROL_FLAGS,
    CONVERSATIONS_TABLE,
    DEDUP_TABLE,
    REQUESTS_INTERACTIVE,
)
from clawstream.streams.trace import TRACE_TOPICS, Found, partitions_of, plan, read_range

SHOWN_CHARS = 70


def live_view(settings: Settings, conversation_id: str, partition: int,
              found: list[Found]) -> dict[str, Any]:
    """The conversation as the system holds it: both tables and the answers given."""
    bootstrap = settings.bootstrap_servers
    conversations = table_values(bootstrap, settings.app_id, CONVERSATIONS_TABLE, partition,
                                 lambda key: key == conversation_id)
    # Dedup keys are tenant|conversation|idempotency key (processors.keys.dedup_key).
    dedup = table_values(bootstrap, settings.app_id, DEDUP_TABLE, partition,
                         lambda key: f"|{conversation_id}|" in key)
    answers = {cast(AgentAnswer, f.record)["request_id"]: cast(AgentAnswer, f.record)["status"]
               for f in found if f.schema == AGENT_ANSWER}
    return {"conversation": conversations.get(conversation_id), "dedup": dedup,
            "answers": answers}


def _shown(value: object, raw: bool) -> str:
    text = repr(value)
    text = text if raw else mask_text(text)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def render(found: list[Difference], raw: bool) -> Table:
    table = Table(title="live tables vs rebuilt from the events", expand=False)
    for column in ("where", "live", "rebuilt"):
        table.add_column(column, overflow="fold")
    for d in found:
        table.add_row(d.path, _shown(d.live, raw), _shown(d.rebuilt, raw))
    return table


def compare(conversation_id: str, raw: bool) -> int:
    """Rebuild, compare, print; the exit code."""
    settings = Settings()
    bootstrap = settings.bootstrap_servers
    console = Console()
    ranges = partitions_of(bootstrap, conversation_id, TRACE_TOPICS)
    found = list(read_with_progress(bootstrap, plan(bootstrap, ranges, since_ms=0),
                                    conversation_id, Console(stderr=True)))
    if not found:
        console.print(f"[red]no records of conversation {conversation_id} on the topics[/red]")
        return 1
    flags = flag_changes(read_range(bootstrap, {CONTROL_FLAGS.name: [0]}, since_ms=0))
    rules = Rules(Policy.from_settings(settings), load_registry(settings))
    rebuilt = rebuild(found, rules, settings, flags)
    live = live_view(settings, conversation_id, ranges[REQUESTS_INTERACTIVE.name][0], found)
    diffs = differences(live, {"conversation": rebuilt.conversation, "dedup": rebuilt.dedup,
                               "answers": rebuilt.answers})
    real = [d for d in diffs if not d.timing]
    for note in rebuilt.notes:
        console.print(f"[yellow]note[/yellow]: {note if raw else mask_text(note)}")
    timing = len(diffs) - len(real)
    summary = (f"{rebuilt.inputs} input record(s) replayed; {len(rebuilt.answers)} "
               f"request(s) answered; {timing} time field(s) differ by event time vs "
               "handling time")
    if real:
        console.print(render(real, raw))
        console.print(f"[red]{len(real)} difference(s)[/red]: {summary}")
        return 1
    console.print(f"[green]the rebuilt state equals the live tables[/green]: {summary}")
    return 0

