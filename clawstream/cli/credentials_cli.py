"""``clawstream credentials list|rotate``: the local stack's per-role logins (Kafka SCRAM
users with ACLs, Redis ACL users). Passwords are never printed: each role's secret file is
where its component reads them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.cost import parse_duration_s
from clawstream.config import Credentials, Settings

app = typer.Typer(help="Per-role Kafka and Redis logins of the local stack.",
                  no_args_is_help=True)
console = Console()


@app.command("list")
def list_command() -> None:
    """Each role, its users and its secret file (no passwords)."""
    from clawstream.deploy.access import ROLES
    from clawstream.deploy.local import credentials

    settings = Settings()
    table = Table("role", "Kafka user", "mechanism", "Redis user", "secret file")
    for role in ROLES:
        path = credentials.path_of(settings, role)
        if not path.is_file():
            table.add_row(role, "-", "-", "-", f"{path} (missing: run `clawstream up`)")
            continue
        creds = Credentials.load(path)
        table.add_row(role, creds.kafka.username, creds.kafka.mechanism, creds.redis.username,
                      str(path))
    console.print(table)


@app.command()
def rotate(
    role: Annotated[str, typer.Argument(help="worker, gateway, operator, analyst, "
                                              "coordinator, tools or inference.")],
    grace: Annotated[str, typer.Option(help="How long the old logins stay valid after the "
                                             "role's processes took the new ones (30s, 5m).")
                     ] = "30s",
) -> None:
    """Replace ROLE's Kafka and Redis logins with no downtime: new logins added, the secret
    file rewritten, the role's local processes restarted one at a time, the old logins
    revoked after the grace period."""
    from clawstream.deploy.local import StackError
    from clawstream.deploy.local.rotation import rotate as rotate_role

    grace_s = parse_duration_s(grace)
    if grace_s is None:
        console.print(f"[red]--grace {grace!r}: give a duration, e.g. 30s, 5m[/red]")
        raise typer.Exit(2)
    try:
        rotate_role(Settings(), role, grace_s, say=console.print)
    except StackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
