"""``clawstream dlq list | show ID | redrive``: look into the dead-letter topic, send back.

A dead letter keeps the original message unchanged (for a step that ran out of attempts:
its request, marked as a redrive of this letter), so a redrive just publishes the payload
to its source topic. The coordinator recognises the mark: the first redrive of a letter
runs the failed request again under its own idempotency key, any later one is a duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from clawstream.config import Settings
from clawstream.schemas.names import DEAD_LETTER
from clawstream.schemas.records import DeadLetter
from clawstream.streams.masking import mask, mask_text
from clawstream.streams.publisher import Publisher
from clawstream.streams.subscriber import read_topic
from clawstream.streams.topics import DLQ

FILTER_FIELDS = ("dlq_id", "tenant_id", "conversation_id", "request_id", "step_id",
                 "error_class", "source_topic", "prompt_signature")

dlq_app = typer.Typer(help="Dead letters: inspect and redrive.", no_args_is_help=True)
console = Console()


def read_letters(bootstrap: str, timeout_s: float = 2.0) -> list[DeadLetter]:
    """Every dead letter once (a coordinator that reprocessed a result after a crash may
    have written the same letter twice: same id)."""
    letters: dict[str, DeadLetter] = {}
    for name, record in read_topic(bootstrap, DLQ.name, timeout_s=timeout_s):
        if name == DEAD_LETTER:
            letter = cast(DeadLetter, record)
            letters.setdefault(letter["dlq_id"], letter)
    return list(letters.values())


def parse_filters(filters: list[str]) -> dict[str, str]:
    parsed = {}
    for item in filters:
        name, sep, value = item.partition("=")
        name = {"tenant": "tenant_id", "conversation": "conversation_id",
                "request": "request_id", "error": "error_class"}.get(name, name)
        if not sep or name not in FILTER_FIELDS:
            raise typer.BadParameter(
                f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(FILTER_FIELDS)} "
                "(or tenant, conversation, request, error)")
        parsed[name] = value
    return parsed


def select(letters: list[DeadLetter], filters: dict[str, str]) -> list[DeadLetter]:
    return [x for x in letters
            if all(str(x.get(k)) == v for k, v in filters.items())]


def redrive(bootstrap: str, letters: list[DeadLetter]) -> int:
    with Publisher(bootstrap) as publisher:  # closing waits for every ack
        deliveries = [publisher.publish_raw(letter["source_topic"], letter["key"],
                                            letter["payload"]) for letter in letters]
    for delivery in deliveries:
        delivery.result()  # raises the first PublishError
    return len(letters)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


FilterOption = Annotated[list[str] | None, typer.Option(
    "--filter", "-f", help="FIELD=VALUE, repeatable: tenant, conversation, request, error, "
    "dlq_id, step_id, source_topic, prompt_signature.")]


@dlq_app.command("list")
def list_(filter_: FilterOption = None) -> None:
    """One line per dead letter: when, why, and whose."""
    letters = select(read_letters(Settings().bootstrap_servers), parse_filters(filter_ or []))
    table = Table("id", "at (UTC)", "error", "tenant", "conversation", "attempts", "reason")
    for x in letters:
        table.add_row(x["dlq_id"], _when(x["at_ms"]), x["error_class"], x["tenant_id"] or "",
                      x["conversation_id"] or "", str(len(x["attempts"])),
                      mask_text(x["reason"])[:60])
    console.print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command()
def show(dlq_id: str) -> None:
    """Everything a dead letter holds (the payload as its size)."""
    letters = select(read_letters(Settings().bootstrap_servers), {"dlq_id": dlq_id})
    if not letters:
        console.print(f"[red]no dead letter {dlq_id!r}[/]")
        raise typer.Exit(1)
    found = letters[0]
    shown: dict[str, object] = {**found, "payload": f"<{len(found['payload'])} bytes>",
                                "key": found["key"].decode(errors="replace")
                                if found["key"] else None, "at": _when(found["at_ms"])}
    console.print_json(json.dumps(mask(shown), default=str))


@dlq_app.command("redrive")
def redrive_cmd(dlq_id: Annotated[str | None, typer.Argument()] = None,
                filter_: FilterOption = None,
                all_: Annotated[bool, typer.Option("--all", help="Every letter.")] = False
                ) -> None:
    """Send letters back to their source topic; a letter already redriven does nothing."""
    filters = parse_filters(filter_ or [])
    if dlq_id:
        filters["dlq_id"] = dlq_id
    if not filters and not all_:
        raise typer.BadParameter("name a letter, give --filter, or say --all")
    settings = Settings()
    letters = select(read_letters(settings.bootstrap_servers), filters)
    sent = redrive(settings.bootstrap_servers, letters)
    console.print(f"redrove {sent} dead letter(s)")
