"""Runtime flags on the compacted ``control.flags`` topic: degradation and kill switches.

The topic is keyed by flag name and compacted, so its latest value per name *is* the
configuration; a reader that starts from the beginning always knows every flag. Every
processor runs a :class:`FlagReader` (a plain consumer with no group: each process must
see every flag, which a consumer group would split between workers), polling every
``flag_poll_s`` (0.2 s by default), so a change applies within 2 s without a restart.

Names (values are strings; ``on``/``off`` for switches):

- ``degrade``: cut steps marked expensive, route models to the smallest pool, answer
  ``degraded``;
- ``kill.tool.<tool>`` / ``kill.pool.<pool>``: turn one tool or one model pool off;
- ``rate.pool.<pool>``: tokens/s of a pool's limiter (overrides capacity x (1 - headroom));
- ``limit.user.<id>`` / ``limit.tenant.<id>``: entrance bucket ``rate/burst`` (requests/s);
- ``budget.tenant.<id>``: ``tokens/cost_usd`` a tenant may spend per budget window;
- ``route.agent.<name>``: which version of an agent new conversations get, and a canary's
  share (``processors/canary/rule.py``; ``clawstream canary`` writes it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from clawstream.processors.canary.rule import ROUTE_PREFIX, parse_route
from clawstream.schemas import DecodeError, decode_as
from clawstream.schemas.names import CONTROL_FLAG
from clawstream.schemas.records import ControlFlag
from clawstream.streams.kafka_access import client_config
from clawstream.streams.publisher import Publisher
from clawstream.streams.topics import CONTROL_FLAGS

ON_VALUES = frozenset({"on", "true", "1", "yes"})
SWITCH_PREFIXES = ("degrade", "kill.tool.", "kill.pool.")
PAIR_PREFIXES = ("limit.user.", "limit.tenant.", "budget.tenant.")
NUMBER_PREFIXES = ("rate.pool.",)


def validate(name: str, value: str) -> None:
    """Raise ValueError for a flag nobody reads or a value its reader cannot parse, so a
    typo at the CLI fails loudly instead of silently doing nothing."""
    if name == "degrade" or name.startswith(("kill.tool.", "kill.pool.")):
        if value not in ON_VALUES | {"off", "false", "0", "no"}:
            raise ValueError(f"{name}: expected on or off, got {value!r}")
        return
    if name.startswith(NUMBER_PREFIXES):
        if float(value) <= 0:
            raise ValueError(f"{name}: tokens/s must be > 0 (use kill.pool.* to stop a pool)")
        return
    if name.startswith(PAIR_PREFIXES):
        first, _, second = value.partition("/")
        if float(first) <= 0 or float(second) <= 0:
            raise ValueError(f"{name}: expected two positive numbers a/b, got {value!r}")
        return
    if name.startswith(ROUTE_PREFIX) and len(name) > len(ROUTE_PREFIX):
        parse_route(value)
        return
    raise ValueError(f"unknown flag {name!r}: known are degrade, kill.tool.*, kill.pool.*, "
                     "rate.pool.*, limit.user.*, limit.tenant.*, budget.tenant.*, "
                     "route.agent.*")


@dataclass(frozen=True)
class FlagView:
    """Typed, read-only questions over a snapshot of flag values."""

    values: Mapping[str, str]

    def _on(self, name: str) -> bool:
        return self.values.get(name, "off").lower() in ON_VALUES

    @property
    def degrade(self) -> bool:
        return self._on("degrade")

    def tool_killed(self, tool: str) -> bool:
        return self._on(f"kill.tool.{tool}")

    def pool_killed(self, pool: str) -> bool:
        return self._on(f"kill.pool.{pool}")

    def pool_rate(self, pool: str) -> float | None:
        raw = self.values.get(f"rate.pool.{pool}")
        return float(raw) if raw else None

    def pair(self, name: str) -> tuple[float, float] | None:
        """``limit.*`` and ``budget.*`` values: two numbers ``a/b``, or None when unset."""
        raw = self.values.get(name)
        if not raw:
            return None
        first, _, second = raw.partition("/")
        return float(first), float(second)


class FlagReader:
    """Follows the control topic in a daemon thread; :meth:`view` is a cheap snapshot."""

    def __init__(self, bootstrap: str, poll_s: float = 0.2) -> None:
        self._bootstrap = bootstrap
        self._poll_s = poll_s
        self._values: dict[str, str] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FlagReader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="flag-reader", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def view(self) -> FlagView:
        with self._changed:
            return FlagView(dict(self._values))

    def wait_until(self, holds: Callable[[FlagView], bool], timeout_s: float) -> bool:
        """Block until the flags satisfy ``holds`` (woken by each change), or time out."""
        with self._changed:
            return self._changed.wait_for(lambda: holds(FlagView(dict(self._values))),
                                          timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception:  # the broker went away: keep the last values, try again
                time.sleep(1.0)

    def _follow(self) -> None:
        consumer = _consumer(self._bootstrap)
        try:
            consumer.assign([TopicPartition(CONTROL_FLAGS.name, 0, OFFSET_BEGINNING)])
            while not self._stop.is_set():
                msg = consumer.poll(self._poll_s)
                if msg is None or msg.error():
                    continue
                self._apply(msg.value())
        finally:
            consumer.close()

    def _apply(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            record = decode_as(CONTROL_FLAG, value)
        except DecodeError:
            return
        with self._changed:
            self._values[record["name"]] = record["value"]
            self._changed.notify_all()


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({**client_config(bootstrap), "enable.auto.commit": False,
                     "group.id": f"clawstream-flags-{uuid.uuid4().hex[:8]}",
                     "auto.offset.reset": "earliest"})


def set_flag(bootstrap: str, name: str, value: str, by: str = "cli") -> ControlFlag:
    """Validate and publish one flag (acked by the broker before returning)."""
    validate(name, value)
    record: ControlFlag = {"name": name, "value": value, "updated_at_ms": int(time.time() * 1000),
              "updated_by": by}
    with Publisher(bootstrap) as publisher:
        publisher.publish(CONTROL_FLAGS.name, name, CONTROL_FLAG, record).result()
    return record


def read_flags(bootstrap: str, timeout_s: float = 10.0) -> dict[str, ControlFlag]:
    """Every flag's latest record: the topic read from the beginning to its end."""
    consumer = _consumer(bootstrap)
    latest: dict[str, ControlFlag] = {}
    try:
        tp = TopicPartition(CONTROL_FLAGS.name, 0, OFFSET_BEGINNING)
        _, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        if high <= 0:
            return latest
        consumer.assign([tp])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            try:
                record = decode_as(CONTROL_FLAG, msg.value())
            except DecodeError:
                pass
            else:
                latest[record["name"]] = record
            if (msg.offset() or 0) >= high - 1:
                break
        return latest
    finally:
        consumer.close()
