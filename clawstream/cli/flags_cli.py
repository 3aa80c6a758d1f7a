"""``clawstream flags set|get``: the operator's switches on the compacted control topic."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clawstream.config import Settings

app = typer.Typer(help="Runtime flags: degrade, kill.tool.*, kill.pool.*, rate.pool.*, "
                  "limit.user.*, limit.tenant.*, budget.tenant.*, route.agent.*",
                  no_args_is_help=True)
console = Console()


@app.command("set")
def set_(name: str, value: str,
         by: Annotated[str, typer.Option(help="Who changes it (kept with the flag).")] = "cli"
         ) -> None:
    """Set a flag; every processor applies it within 2 s, no restart."""
    from clawstream.processors.flow.flags import set_flag
    from clawstream.streams.publisher import PublishError

    try:
        set_flag(Settings().bootstrap_servers, name, value, by)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    except PublishError as exc:
        console.print(f"[red]not set: {exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"{name} = {value}")


@app.command("get")
def get(name: Annotated[str | None, typer.Argument(help="One flag; all when left out.")] = None
        ) -> None:
    """Show the flags' current values (the compacted topic read to its end)."""
    from clawstream.processors.flow.flags import read_flags

    flags = read_flags(Settings().bootstrap_servers)
    table = Table("flag", "value", "updated", "by")
    for flag, record in sorted(flags.items()):
        if name is None or flag == name:
            at = time.strftime("%Y-%m-%d %H:%M:%S",
                               time.localtime(int(str(record["updated_at_ms"])) / 1000))
            table.add_row(flag, str(record["value"]), at, str(record["updated_by"]))
    console.print(table)
