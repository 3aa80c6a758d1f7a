"""``clawstream keys create|list|revoke --tenant T``: the gateway's API keys (stored
hashed in the stack's Redis; a new key is printed once and cannot be shown again)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from clawstream.config import Settings

app = typer.Typer(help="API keys of the HTTP gateway, per tenant.", no_args_is_help=True)
console = Console()
Tenant = Annotated[str, typer.Option("--tenant", "-t", help="The tenant the key acts for.")]
T = TypeVar("T")


def _with_store(work: Callable[..., Awaitable[T]]) -> T:
    import redis.asyncio as aioredis

    from clawstream.gateway.apikeys import KeyStore

    async def run() -> T:
        client = aioredis.Redis.from_url(Settings().redis_url)
        try:
            return await work(KeyStore(client))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    except OSError as exc:
        console.print(f"[red]Redis is not reachable ({exc}); is the stack up?[/]")
        raise typer.Exit(1) from exc


@app.command()
def create(tenant: Tenant,
           name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = ""
           ) -> None:
    """Create a key for the tenant and print it (only this once)."""
    info, key = _with_store(lambda store: store.create(tenant, name))
    console.print(f"key id [bold]{info.key_id}[/] for tenant [bold]{tenant}[/] "
                  "(shown once, keep it):")
    typer.echo(key)


@app.command("list")
def list_(tenant: Tenant) -> None:
    """The tenant's keys (ids and labels; the keys themselves are not stored)."""
    infos = _with_store(lambda store: store.list(tenant))
    table = Table("key id", "name", "created")
    for info in infos:
        table.add_row(info.key_id, info.name,
                      time.strftime("%Y-%m-%d %H:%M:%S",
                                    time.localtime(info.created_at_ms / 1000)))
    console.print(table)


@app.command()
def revoke(key_id: str, tenant: Tenant) -> None:
    """Delete a key; gateways refuse it within ``CLAWSTREAM_GATEWAY_KEY_CACHE_S``."""
    if not _with_store(lambda store: store.revoke(tenant, key_id)):
        console.print(f"[red]tenant {tenant} has no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")
