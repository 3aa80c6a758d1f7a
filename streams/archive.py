"""The cold archive (``clawstream archive``): the records of finished requests as Parquet
under an fsspec URL, partitioned ``tenant=<tenant id>/day=<YYYY-MM-DD, UTC>/``.

Why: the hot topics keep the audit trail only as long as their retention; the archive keeps
it after that, where DuckDB, pandas or ``pyarrow.dataset`` read it as is (hive partitioning,
the flat table of :mod:`clawstream.streams.replay`). Any fsspec URL works: a directory,
``s3://bucket/prefix`` in a cluster, ``memory://`` in tests.

Why finished requests only: a request's records are spread over several topics and arrive
during its life, and its tenant (events carry none) and day come from its answer. A request
not answered yet waits for the next run, so no request is filed under a guessed tenant.

How a rerun resumes and never doubles a row: the archive holds its own progress
(``_checkpoints/state.json``, one object, so it changes at once on an object store): per
topic-partition the end it has read to and the offsets below it still waiting (records of
unfinished requests). The next run reads from the first waiting offset and skips every other
record below the end. A run records what it reads (the ends, its clock) before it writes, so
a run repeated after a crash reads the same records, decides the same and overwrites the
same files (named by topic, partition and first and last offset).

Three kinds of record have no answer to wait for, and would hold a checkpoint back: records
of no request (an agent's canary events, some dead letters) are archived at once, under
their own tenant if they carry one; a request unanswered for ``grace_ms`` (its answer lost to
retention, its worker gone for hours) is archived as it stands; and records that arrive
after their request's answer was archived (a late step result) find the tenant and day in
the answers the archive remembers for ``grace_ms``. Undecodable records are skipped, as by
``replay``. One run at a time: two at once would read and write the same records.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

from clawstream.schemas.names import AGENT_ANSWER, AGENT_REQUEST
from clawstream.streams.masking import mask
from clawstream.streams.replay import parquet_table
from clawstream.streams.trace import Found

TP = tuple[str, int]
"""(topic, partition)."""
Home = tuple[str | None, str]
"""Where a record is filed: (tenant, day)."""
Reader = Callable[[Mapping[TP, tuple[int, int]]], Iterable[Found]]
"""Every decodable record of each topic-partition between its (start, end) offsets; raises
when it cannot read them all (nothing is written then)."""

STATE_PATH = "_checkpoints/state.json"
NO_TENANT = "__HIVE_DEFAULT_PARTITION__"
"""Hive's name for a null partition value: pyarrow and DuckDB read it back as null."""


@dataclass(frozen=True)
class Checkpoint:
    """How far one topic-partition is archived: every record below ``end`` is, except the
    ``waiting`` ones (records of requests not finished yet)."""

    end: int = 0
    waiting: frozenset[int] = frozenset()

    def start(self) -> int:
        """Where the next run reads from: the first waiting record, else the end."""
        return min(self.waiting, default=self.end)

    def wants(self, offset: int) -> bool:
        """Whether a record read is not archived yet (a run rereads archived ones that lie
        between waiting ones)."""
        return offset >= self.end or offset in self.waiting

    def lost(self, low: int) -> int:
        """How many records this checkpoint still wanted lie below ``low``, the first offset
        the partition holds: deleted by retention before they could be archived."""
        return sum(o < low for o in self.waiting) + max(0, low - self.end)


@dataclass(frozen=True)
class Answered:
    """What the archive remembers of an archived answer: where late records of its request
    are filed."""

    tenant: str
    day: str
    at_ms: int


@dataclass(frozen=True)
class Run:
    """One run: the offset it reads to (exclusive) per topic-partition, and its clock."""

    ends: Mapping[TP, int]
    now_ms: int


@dataclass(frozen=True)
class State:
    """The archive's progress; ``run`` is set while a run is under way (see the module
    docstring)."""

    checkpoints: Mapping[TP, Checkpoint] = field(default_factory=dict)
    answered: Mapping[str, Answered] = field(default_factory=dict)
    run: Run | None = None

    def checkpoint(self, tp: TP) -> Checkpoint:
        return self.checkpoints.get(tp, Checkpoint())

    def following(self, run: Run) -> State:
        """Checkpoints past the end of their partition belong to an earlier topic of that
        name (deleted and made again): that partition is archived afresh."""
        return replace(self, run=run, checkpoints={
            tp: Checkpoint() if tp in run.ends and cp.end > run.ends[tp] else cp
            for tp, cp in self.checkpoints.items()})

    def ranges(self, lows: Mapping[TP, int]) -> dict[TP, tuple[int, int]]:
        """What the run reads: from each partition's start (or the first offset it still
        holds) to the run's end; partitions with nothing new left out."""
        assert self.run is not None
        out = {}
        for tp, end in self.run.ends.items():
            start = max(self.checkpoint(tp).start(), lows.get(tp, 0))
            if start < end:
                out[tp] = (start, end)
        return out

    def lost(self, lows: Mapping[TP, int]) -> int:
        """Records the archive was still owed that retention deleted first."""
        return sum(cp.lost(lows[tp]) for tp, cp in self.checkpoints.items() if tp in lows)

    def to_json(self) -> str:
        return json.dumps({
            "checkpoints": {_key(tp): {"end": cp.end, "waiting": sorted(cp.waiting)}
                            for tp, cp in self.checkpoints.items()},
            "answered": {rid: [a.tenant, a.day, a.at_ms] for rid, a in self.answered.items()},
            "run": None if self.run is None else {
                "ends": {_key(tp): end for tp, end in self.run.ends.items()},
                "now_ms": self.run.now_ms},
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        run = data["run"]
        return cls(
            checkpoints={_tp(k): Checkpoint(v["end"], frozenset(v["waiting"]))
                         for k, v in data["checkpoints"].items()},
            answered={rid: Answered(*a) for rid, a in data["answered"].items()},
            run=None if run is None else Run({_tp(k): e for k, e in run["ends"].items()},
                                             run["now_ms"]))


def _key(tp: TP) -> str:
    return f"{tp[0]}/{tp[1]}"  # Kafka topic names have no "/"


def _tp(key: str) -> TP:
    topic, partition = key.rsplit("/", 1)
    return topic, int(partition)


@dataclass(frozen=True)
class Place:
    """One file's partition of the archive and the topic-partition its records come from."""

    tenant: str | None
    day: str
    topic: str
    partition: int

    def path(self, offsets: Iterable[int]) -> str:
        """Relative to the archive's root; named by its first and last offset, so the same
        records get the same name (a repeated run overwrites, never adds)."""
        ordered = sorted(offsets)
        tenant = NO_TENANT if self.tenant is None else quote(self.tenant, safe="")
        return (f"tenant={tenant}/day={self.day}/"
                f"{self.topic}-{self.partition}-{ordered[0]}-{ordered[-1]}.parquet")


@dataclass(frozen=True)
class Batch:
    """One run's decisions: the files to write, the state once they are written, counts."""

    files: Mapping[Place, Sequence[Found]]
    state: State
    finished: int
    """Requests whose answer this run archives."""
    given_up: int
    """Requests archived without an answer, ``grace_ms`` after their first record."""
    waiting: int
    """Unfinished requests, left for a next run."""
    waiting_records: int

    @property
    def records(self) -> int:
        return sum(len(rows) for rows in self.files.values())


def day(ms: int) -> str:
    """The UTC day of a timestamp, as a partition value."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _request(f: Found) -> str | None:
    value = cast(dict[str, Any], f.record).get("request_id")
    return value if isinstance(value, str) else None


def _position(f: Found) -> tuple[int, str, int, int]:
    """A total order on records that does not depend on how a read interleaved partitions."""
    return f.timestamp_ms, f.topic, f.partition, f.offset


def _answers(rows: Sequence[Found]) -> dict[str, Answered]:
    """The first answer of each request among ``rows``."""
    out: dict[str, Answered] = {}
    for f in sorted((f for f in rows if f.schema == AGENT_ANSWER), key=_position):
        rid = _request(f)
        if rid is not None:
            tenant = cast(dict[str, Any], f.record)["tenant_id"]
            out.setdefault(rid, Answered(tenant, day(f.timestamp_ms), f.timestamp_ms))
    return out


def _homes(rows: Sequence[Found], answered: Mapping[str, Answered], cutoff_ms: int
           ) -> dict[str, Home | None]:
    """Per request among ``rows``: its answer's tenant and day; for one unanswered since
    before ``cutoff_ms``, its request's tenant (None if that was not read) and the day of
    its first record; None for one still to wait for."""
    first: dict[str, Found] = {}
    tenants: dict[str, str] = {}
    for f in sorted(rows, key=_position):
        rid = _request(f)
        if rid is not None:
            first.setdefault(rid, f)
            if f.schema == AGENT_REQUEST:
                tenants.setdefault(rid, cast(dict[str, Any], f.record)["tenant_id"])
    homes: dict[str, Home | None] = {}
    for rid, f in first.items():
        if rid in answered:
            homes[rid] = (answered[rid].tenant, answered[rid].day)
        elif f.timestamp_ms < cutoff_ms:
            homes[rid] = (tenants.get(rid), day(f.timestamp_ms))
        else:
            homes[rid] = None
    return homes


def _own_home(f: Found) -> Home:
    """A record of no request: its own tenant, if it carries one, and its own day."""
    tenant = cast(dict[str, Any], f.record).get("tenant_id")
    return (tenant if isinstance(tenant, str) else None), day(f.timestamp_ms)


def sort_out(found: Iterable[Found], state: State, grace_ms: int) -> Batch:
    """Pure: where each record of a run (``state.run``) is filed, which wait, and the state
    after the run. ``state`` is the one the run started from: its checkpoints tell the
    records archived before (skipped) from the ones to decide on."""
    assert state.run is not None
    rows = [f for f in found if state.checkpoint((f.topic, f.partition)).wants(f.offset)]
    cutoff_ms = state.run.now_ms - grace_ms
    answers = _answers(rows)
    answered = {**answers, **state.answered}  # a repeated answer: the first one's home
    homes = _homes(rows, answered, cutoff_ms)
    files: dict[Place, list[Found]] = defaultdict(list)
    waiting: dict[TP, set[int]] = defaultdict(set)
    waiting_requests: set[str] = set()
    for f in sorted(rows, key=lambda f: (f.topic, f.partition, f.offset)):
        rid = _request(f)
        home = _own_home(f) if rid is None else homes[rid]
        if home is None:
            waiting[(f.topic, f.partition)].add(f.offset)
            waiting_requests.add(cast(str, rid))
        else:
            files[Place(*home, f.topic, f.partition)].append(f)
    checkpoints = {**state.checkpoints, **{tp: Checkpoint(end, frozenset(waiting[tp]))
                                          for tp, end in state.run.ends.items()}}
    remembered = {rid: a for rid, a in answered.items() if a.at_ms >= cutoff_ms}
    return Batch(files=dict(files), state=State(checkpoints, remembered),
                 finished=len(answers.keys() - state.answered.keys()),
                 given_up=sum(h is not None and rid not in answered for rid, h in homes.items()),
                 waiting=len(waiting_requests),
                 waiting_records=sum(len(offsets) for offsets in waiting.values()))


class Archive:
    """The archive at an fsspec URL: its Parquet files and its state."""

    def __init__(self, url: str) -> None:
        from fsspec.core import url_to_fs

        self.url = url
        self.fs, root = url_to_fs(url)
        self.root = str(root).rstrip("/")

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def load(self) -> State:
        path = self._path(STATE_PATH)
        if not self.fs.exists(path):
            return State()  # a new archive: every partition from the first record it holds
        return State.from_json(self.fs.cat_file(path).decode())

    def save(self, state: State) -> None:
        """Written aside, then moved over the old one: a crash leaves the old state or the
        new one, never half of one."""
        path = self._path(STATE_PATH)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(f"{path}.new", state.to_json().encode())
        self.fs.mv(f"{path}.new", path)

    def write(self, files: Mapping[Place, Sequence[Found]], raw: bool) -> list[str]:
        """One Parquet file per place, personal data masked unless ``raw``; the paths."""
        import pyarrow.parquet as pq

        paths = []
        for place, rows in files.items():
            path = self._path(place.path(f.offset for f in rows))
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            records = rows if raw else [replace(f, record=mask(f.record)) for f in rows]
            with self.fs.open(path, "wb") as sink:
                pq.write_table(parquet_table(records), sink)
            paths.append(path)
        return paths


@dataclass(frozen=True)
class Report:
    """What a run did, for the operator."""

    batch: Batch
    paths: list[str]
    resumed: bool
    """This run repeated one that stopped before it was done (a crash, a lost broker)."""
    lost: int
    """Records retention deleted before the archive had them."""


def archive(store: Archive, marks: Mapping[TP, tuple[int, int]], read: Reader, now_ms: int,
            grace_ms: int, raw: bool = False) -> Report:
    """One run over the partitions of ``marks`` ((first offset held, end) each): read what
    is new since the last run, write the finished requests' records, then the state. A run
    that stopped before its state was written is repeated as it was (same ends, same
    clock)."""
    state = store.load()
    resumed = state.run is not None
    state = state.following(state.run or Run({tp: end for tp, (_low, end) in marks.items()},
                                             now_ms))
    if not resumed:
        store.save(state)
    lows = {tp: low for tp, (low, _end) in marks.items()}
    batch = sort_out(read(state.ranges(lows)), state, grace_ms)
    paths = store.write(batch.files, raw)
    store.save(batch.state)
    return Report(batch, paths, resumed, state.lost(lows))
