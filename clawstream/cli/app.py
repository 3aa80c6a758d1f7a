"""The operator's and the service developer's one command line."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from clawstream.cli.archive_cli import archive_command
from clawstream.cli.canary_cli import app as canary_app
from clawstream.cli.cost_cli import cost as cost_command
from clawstream.cli.credentials_cli import app as credentials_app
from clawstream.cli.dlq import dlq_app
from clawstream.cli.eval_cli import eval_command
from clawstream.cli.flags_cli import app as flags_app
from clawstream.cli.keys_cli import app as keys_app
from clawstream.cli.load_cli import load as load_command
from clawstream.cli.render import decisions_table, print_answer
from clawstream.cli.schemas_cli import app as schemas_app
from clawstream.cli.top import top as top_command
from clawstream.cli.trace_cli import replay as replay_command
from clawstream.cli.trace_cli import trace as trace_command
from clawstream.config import Settings
from clawstream.schemas.names import AGENT_ANSWER, AGENT_EVENT
from clawstream.schemas.records import AgentAnswer, AgentEvent
from clawstream.streams import kafka_access
from clawstream.streams.schema_registry import bind_settings

app = typer.Typer(help="clawstream: AI-agent conversations on Kafka.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(flags_app, name="flags")
app.add_typer(keys_app, name="keys")
app.add_typer(credentials_app, name="credentials")
app.add_typer(canary_app, name="canary")
app.add_typer(schemas_app, name="schemas")
console = Console()
app.command(name="cost")(cost_command)
app.command(name="eval")(eval_command)
app.command(name="top")(top_command)
app.command(name="trace")(trace_command)
app.command(name="replay")(replay_command)
app.command(name="archive")(archive_command)
app.command(name="load")(load_command)


def _settings() -> Settings:
    return Settings()


@app.callback()
def _bind_registry() -> None:
    """Kafka clients log in as this process's role. What a command publishes (ask, flags,
    canary, dlq redrive) goes out in the schema registry's wire format, as the workers'
    records do. Ids are asked for when first needed: `up` and `demo` bind before they have
    started the registry."""
    settings = _settings()
    bind_settings(settings, learn_now=False)
    kafka_access.bind(settings)  # as the operator, unless CLAWSTREAM_ROLE says otherwise


@app.command()
def up(workers: Annotated[bool, typer.Option(help="Start the Faust workers too.")] = True,
       gateway: Annotated[bool, typer.Option(help="Start the HTTP gateway too.")] = True,
       brokers: Annotated[int | None, typer.Option(
           min=1, help="Kafka nodes (default: CLAWSTREAM_KAFKA_BROKERS, 1). From 3 on, "
           "topics are replicated 3 times with min.insync.replicas=2.")] = None,
       ) -> None:
    """Start the local stack (Kafka, Redis, schema registry, Ray Serve + model, topics,
    workers, gateway); idempotent."""
    from clawstream.deploy.local import RichProgress, StackError
    from clawstream.deploy.local import gateway as gateway_proc
    from clawstream.deploy.local import up as stack_up

    settings = _settings() if brokers is None else Settings(kafka_brokers=brokers)
    try:
        stack_up(settings, with_workers=workers, progress=RichProgress(console))
        if gateway:
            gateway_proc.start(settings)
    except StackError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    _print_status(settings)


@app.command()
def down(purge: Annotated[bool, typer.Option(help="Also delete the stack's data.")] = False
         ) -> None:
    """Stop the local stack; idempotent."""
    from clawstream.deploy.local import RichProgress
    from clawstream.deploy.local import down as stack_down

    stack_down(_settings(), purge=purge, progress=RichProgress(console))


def _print_status(settings: Settings) -> None:
    from clawstream.deploy.local import status as stack_status

    table = Table("component", "running", "pid", "address", "detail")
    for row in stack_status(settings):
        table.add_row(row.name, "yes" if row.running else "[red]no[/]", str(row.pid or ""),
                      row.address, row.detail)
    console.print(table)


@app.command()
def status() -> None:
    """Show what runs in the local stack."""
    _print_status(_settings())


@app.command()
def ask(
    text: str,
    agent: Annotated[str, typer.Option(help="Agent name (researcher, chat).")] = "researcher",
    conversation: Annotated[str | None, typer.Option(help="Conversation id.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat-safe key.")] = None,
    tenant: str = "default",
    lane: str = "interactive",
    timeout: float = 120.0,
    decisions: Annotated[bool, typer.Option(help="Show the model's decisions (agents that "
                                            "call tools).")] = True,
) -> None:
    """Publish a request and wait for its answer (a repeated key returns the first answer)."""
    from clawstream.streams.publisher import Publisher, new_request, publish_request
    from clawstream.streams.subscriber import answer_since, wait_for_answer
    from clawstream.streams.topics import ANSWERS

    settings = _settings()
    try:
        request = new_request(agent=agent, conversation_id=conversation or uuid.uuid4().hex,
                              text=text, idempotency_key=idempotency_key, tenant_id=tenant,
                              lane=lane)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    with Publisher(settings.bootstrap_servers) as publisher:
        publish_request(publisher, request).result(timeout)  # acked before we wait
    answer = wait_for_answer(settings.bootstrap_servers, ANSWERS.name,
                             idempotency_key=request["idempotency_key"],
                             conversation_id=request["conversation_id"], timeout_s=timeout,
                             since_ms=answer_since(request))
    if answer is None:
        console.print(f"[red]no answer within {timeout:.0f}s[/] (request "
                      f"{request['request_id']}); is the worker running? `clawstream status`")
        raise typer.Exit(1)
    print_answer(console, answer)
    if decisions and sum(e["step_type"] == "model" for e in answer["timeline"]) > 1:
        made = _decisions(settings, answer["conversation_id"], answer["request_id"])
        if made:
            console.print(decisions_table(made))


def _decisions(settings: Settings, conversation_id: str, request_id: str) -> list[AgentEvent]:
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import EVENTS

    found: list[AgentEvent] = []
    for name, record in read_topic(settings.bootstrap_servers, EVENTS.name, timeout_s=3):
        event = cast(AgentEvent, record) if name == AGENT_EVENT else None
        if (event and event["conversation_id"] == conversation_id
                and event["request_id"] == request_id and event["event_type"] == "decision"):
            found.append(event)
    return found


@app.command()
def tail(from_beginning: bool = False, idle: float = 3600.0) -> None:
    """Follow the answer topic, decoded."""
    from clawstream.streams.subscriber import read_topic
    from clawstream.streams.topics import ANSWERS

    for name, record in read_topic(_settings().bootstrap_servers, ANSWERS.name,
                                   timeout_s=idle, from_beginning=from_beginning):
        if name == AGENT_ANSWER:
            print_answer(console, cast(AgentAnswer, record))


@app.command()
def demo() -> None:
    """Start the stack, run a two-turn conversation through a fixed plan (a tool, then the
    model), then a question to an agent whose model decides to call a tool."""
    up(workers=True, gateway=True)
    conversation = f"demo-{uuid.uuid4().hex[:8]}"
    for question in ("Where does clawstream keep its caches?",
                     "And how long are tool results kept there?"):
        console.rule(f"[bold]user:[/] {question}")
        ask(question, agent="researcher", conversation=conversation, idempotency_key=None,
            tenant="default", lane="interactive", timeout=180.0)
    question = "What is 37 * 91? Use calculate."
    console.rule(f"[bold]user:[/] {question} [dim](agent assistant decides which tools)[/]")
    ask(question, agent="assistant", conversation=f"{conversation}-tools",
        idempotency_key=None, tenant="default", lane="interactive", timeout=240.0)


if __name__ == "__main__":
    sys.exit(app())
