"""Reading a plan of topic ranges with a progress bar (replay, replay --rebuild)."""

from __future__ import annotations

from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress

from clawstream.streams.trace import Found, Plan, read_plan


def planned(todo: Plan) -> int:
    """How many records a plan covers."""
    return sum(end - tp.offset for tp, end in todo)


def read_with_progress(bootstrap: str, todo: Plan, conversation_id: str | None,
                       console: Console) -> Iterator[Found]:
    """The plan's records (only ``conversation_id``'s when given), with a bar over every
    record read on ``console``: a long read shows it is moving."""
    with Progress(console=console) as progress:
        task = progress.add_task("reading", total=planned(todo))
        yield from read_plan(bootstrap, todo, lambda n: progress.advance(task, n),
                             conversation_id)
