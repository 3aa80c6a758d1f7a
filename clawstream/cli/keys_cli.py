"""``clawstream keys create|list|rotate|revoke --tenant T``: the gateway's API keys (stored
hashed in the stack's Redis; a new key is printed once and cannot be shown again; each
expires, after ``CLAWSTREAM_GATEWAY_KEY_TTL_DAYS`` unless told otherwise)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.cost import parse_duration_s
from clawstream.config import Settings

if TYPE_CHECKING:
    from clawstream.gateway.apikeys import KeyInfo

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


ExpiresIn = Annotated[str | None, typer.Option(
    "--expires-in", help="Lifetime of the new key: 90s, 30m, 12h, 30d, or never (default: "
    "CLAWSTREAM_GATEWAY_KEY_TTL_DAYS).")]


def _lifetime_s(expires_in: str | None) -> float | None:
    """The new key's lifetime in seconds; None: it never expires."""
    if expires_in is None:
        days = Settings().gateway_key_ttl_days
        return days * 86400 if days else None
    if expires_in == "never":
        return None
    seconds = parse_duration_s(expires_in)
    if seconds is None or seconds <= 0:
        raise typer.BadParameter(f"{expires_in!r}: expected e.g. 12h, 30d, or never",
                                 param_hint="--expires-in")
    return seconds


def _when(at_ms: int | None) -> str:
    if at_ms is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000))


def _show_new(info: KeyInfo, tenant: str) -> None:
    console.print(f"key id [bold]{info.key_id}[/] for tenant [bold]{tenant}[/], expires "
                  f"{_when(info.expires_at_ms)} (shown once, keep it):")


@app.command()
def create(tenant: Tenant,
           name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
           expires_in: ExpiresIn = None) -> None:
    """Create a key for the tenant and print it (only this once)."""
    ttl_s = _lifetime_s(expires_in)
    info, key = _with_store(lambda store: store.create(tenant, name, ttl_s))
    _show_new(info, tenant)
    typer.echo(key)


@app.command("list")
def list_(tenant: Tenant) -> None:
    """The tenant's keys (ids, labels, expiry; the keys themselves are not stored)."""
    infos = _with_store(lambda store: store.list(tenant))
    now = int(time.time() * 1000)
    table = Table("key id", "name", "created", "expires")
    for info in infos:
        expiry = _when(info.expires_at_ms)
        table.add_row(info.key_id, info.name, _when(info.created_at_ms),
                      f"[red]{expiry} (expired)[/]" if info.expired(now) else expiry)
    console.print(table)


@app.command()
def rotate(key_id: str, tenant: Tenant,
           grace: Annotated[str, typer.Option(help="How long the old key keeps working: "
                                              "90s, 30m, 1h, 1d.")] = "1h",
           expires_in: ExpiresIn = None) -> None:
    """Print a new key with the old one's label; the old one keeps working for --grace
    (never past its own expiry), so clients switch over with no failed request."""
    grace_s = parse_duration_s(grace)
    if grace_s is None:
        raise typer.BadParameter(f"{grace!r}: expected e.g. 30m or 1h", param_hint="--grace")
    ttl_s = _lifetime_s(expires_in)
    rotated = _with_store(lambda store: store.rotate(tenant, key_id, grace_s, ttl_s))
    if rotated is None:
        console.print(f"[red]tenant {tenant} has no key {key_id}[/]")
        raise typer.Exit(1)
    info, key = rotated
    console.print(f"{key_id} keeps working for {grace}; its replacement:")
    _show_new(info, tenant)
    typer.echo(key)


@app.command()
def revoke(key_id: str, tenant: Tenant) -> None:
    """Delete a key; gateways refuse it within ``CLAWSTREAM_GATEWAY_KEY_CACHE_S``."""
    if not _with_store(lambda store: store.revoke(tenant, key_id)):
        console.print(f"[red]tenant {tenant} has no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")
