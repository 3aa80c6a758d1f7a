"""``clawstream archive``: finished requests' records to the cold archive (Parquet under an
fsspec URL), from where the last run stopped; see :mod:`clawstream.streams.archive`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated

import typer
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.progress import Progress

from clawstream.config import Settings
from clawstream.streams.archive import TP, Archive, Reader, archive
from clawstream.streams.trace import TRACE_TOPICS, Found, all_partitions, read_plan, watermarks


class IncompleteRead(RuntimeError):
    """The brokers stopped answering before a run had read its ranges."""


def kafka_reader(bootstrap: str, progress: Progress) -> Reader:
    """Reads the ranges with a progress bar over them; a read that stops short raises, so
    the run writes nothing and the next one repeats it."""
    def read(ranges: Mapping[TP, tuple[int, int]]) -> list[Found]:
        todo = [(TopicPartition(topic, partition, start), end)
                for (topic, partition), (start, end) in ranges.items()]
        total = sum(end - start for start, end in ranges.values())
        task = progress.add_task("reading", total=total)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress.advance(task, n)

        found = list(read_plan(bootstrap, todo, advance))
        if done < total:
            raise IncompleteRead(f"read {done} of {total} records: the brokers stopped "
                                 "answering; nothing archived, the next run repeats this one")
        return found
    return read


def archive_command(
    url: Annotated[str | None, typer.Option(
        help="Where the archive is: a directory or an fsspec URL (s3://bucket/prefix). "
        "Default: CLAWSTREAM_ARCHIVE_URL, else <state dir>/archive.")] = None,
    raw: Annotated[bool, typer.Option(help="Archive personal data unmasked.")] = False,
) -> None:
    """The records of finished requests on every conversation-scoped topic and the dead
    letters, as Parquet partitioned tenant=/day=, from where the last run stopped; requests
    not answered yet are left for the next run."""
    settings = Settings()
    target = url or settings.archive_url
    bootstrap = settings.bootstrap_servers
    console = Console(stderr=True)
    marks = watermarks(bootstrap, all_partitions(bootstrap, TRACE_TOPICS))
    with Progress(console=console) as progress:
        try:
            report = archive(Archive(target), marks, kafka_reader(bootstrap, progress),
                             int(time.time() * 1000), int(settings.archive_grace_s * 1000), raw)
        except IncompleteRead as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
    batch = report.batch
    if report.resumed:
        console.print("repeated a run that stopped before it was done")
    console.print(f"archived {batch.finished} finished request(s), {batch.given_up} given up "
                  f"unanswered, {batch.records} record(s) in {len(report.paths)} file(s) -> "
                  f"{target}")
    console.print(f"left for the next run: {batch.waiting} unfinished request(s), "
                  f"{batch.waiting_records} record(s)")
    if report.lost:
        console.print(f"[yellow]{report.lost} record(s) left the topics (retention) before "
                      "they were archived[/yellow]")
