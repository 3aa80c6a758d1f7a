"""``clawstream schemas register``: the migration command that puts this release's schemas
into the registry (``up`` runs it too). A change the registry refuses under its
compatibility level (BACKWARD) stops here, with the registry's reason, before any process
writes with it."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from clawstream.config import Settings
from clawstream.streams.schema_registry import RegistryClient, RegistryError, register_all

app = typer.Typer(help="The schema registry: register this release's schemas.",
                  no_args_is_help=True)


@app.command()
def register() -> None:
    """Register every current schema under its record's name (an unchanged schema keeps
    its id); exit 1 with the registry's reason when it refuses one."""
    settings = Settings()
    console = Console()
    if not settings.schema_registry_enabled:
        console.print("[red]no schema registry: CLAWSTREAM_SCHEMA_REGISTRY_ENABLED is off[/red]")
        raise typer.Exit(1)
    client = RegistryClient(settings.schema_registry_url)
    try:
        ids = register_all(client)
    except RegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    finally:
        client.close()
    table = Table(title=f"registered at {settings.schema_registry_url}")
    table.add_column("subject (record)")
    table.add_column("id", justify="right")
    for name, schema_id in ids.items():
        table.add_row(name, str(schema_id))
    console.print(table)
