"""Which buffered step runs next: interactive before batch, tenants in turn within a lane.

Strict priority between lanes is safe from starvation in the other direction because the
batch lane still gets every slot the interactive lane leaves (interactive traffic is small
by nature, and its own entrance buckets bound it). Within a lane, tenants take turns one
step each (round-robin): one tenant's flood waits behind another tenant's single step, never
the reverse. The buffer is bounded per lane; a full lane is the dispatcher's signal to
pause that lane's partitions, so nothing queues in memory without bound.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from clawstream.schemas.records import StepCommand

LANES = ("interactive", "batch")


@dataclass
class Pending:
    """A fetched step command waiting for admission; ``event`` is acked once it is done."""

    cmd: StepCommand
    event: Any = None
    cost: int = 0
    pool: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lane(self) -> str:
        return str(self.cmd.get("lane") or "interactive")

    @property
    def tenant(self) -> str:
        return str(self.cmd.get("tenant_id") or "default")


class LaneScheduler:
    def __init__(self, per_lane_limit: int) -> None:
        self.per_lane_limit = per_lane_limit
        self._lanes: dict[str, OrderedDict[str, deque[Pending]]] = {
            lane: OrderedDict() for lane in LANES}
        self._counts = dict.fromkeys(LANES, 0)

    def _lane(self, lane: str) -> OrderedDict[str, deque[Pending]]:
        return self._lanes[lane if lane in self._lanes else LANES[-1]]

    def push(self, item: Pending, front: bool = False) -> None:
        """Queue ``item``; ``front`` puts a step back first in line (after an overload)."""
        tenants = self._lane(item.lane)
        queue = tenants.setdefault(item.tenant, deque())
        if front:
            queue.appendleft(item)
            tenants.move_to_end(item.tenant, last=False)
        else:
            queue.append(item)
        self._counts[item.lane if item.lane in self._counts else LANES[-1]] += 1

    def peek(self) -> Pending | None:
        """The next step to admit, without taking it (a higher-priority arrival may win)."""
        for lane in LANES:
            tenants = self._lanes[lane]
            if tenants:
                return next(iter(tenants.values()))[0]
        return None

    def pop(self) -> Pending | None:
        """Take the next step; its tenant goes to the back of its lane's turn order."""
        for lane in LANES:
            tenants = self._lanes[lane]
            if not tenants:
                continue
            tenant, queue = next(iter(tenants.items()))
            item = queue.popleft()
            if queue:
                tenants.move_to_end(tenant)
            else:
                del tenants[tenant]
            self._counts[lane] -= 1
            return item
        return None

    def count(self, lane: str) -> int:
        return self._counts.get(lane, 0)

    def full(self, lane: str) -> bool:
        return self.count(lane) >= self.per_lane_limit

    def __len__(self) -> int:
        return sum(self._counts.values())
