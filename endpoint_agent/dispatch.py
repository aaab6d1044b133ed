"""Pure dispatch and retry decisions of the interchange (no I/O; unit-tested on their own).

`plan_dispatch` spreads waiting tasks over managers in two passes: first onto idle workers, one
task per manager in turn (so a few tasks land on different nodes), then onto prefetch slots, so a
manager never queues tasks while another manager has idle workers.

`retry_decision` applies `max_retries_on_system_failure`: a task whose run was lost to the fabric
(a worker or manager died) runs again until it has been lost that many extra times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["ManagerSlots", "RetryDecision", "plan_dispatch", "retry_decision"]


@dataclasses.dataclass(frozen=True, slots=True)
class ManagerSlots:
    """What one manager can take right now."""

    manager_id: bytes
    workers: int
    prefetch: int
    outstanding: int

    @property
    def idle_workers(self) -> int:
        return max(0, self.workers - self.outstanding)

    @property
    def free_slots(self) -> int:
        return max(0, self.workers + self.prefetch - self.outstanding)


def plan_dispatch(managers: list[ManagerSlots], waiting: int) -> dict[bytes, int]:
    """How many of `waiting` tasks to send to each manager now."""
    plan: dict[bytes, int] = {}
    remaining = waiting
    capacities: tuple[Callable[[ManagerSlots], int], ...] = (lambda m: m.idle_workers, lambda m: m.free_slots)
    for capacity_of in capacities:
        remaining = _spread(managers, capacity_of, plan, remaining)
        if remaining == 0:
            break
    return {manager_id: count for manager_id, count in plan.items() if count}


def _spread(
    managers: list[ManagerSlots], capacity_of: Callable[[ManagerSlots], int], plan: dict[bytes, int], remaining: int
) -> int:
    """Round-robin `remaining` tasks over managers up to `capacity_of(manager)` each (counting
    what `plan` already gives them)."""
    room = {m.manager_id: capacity_of(m) - plan.get(m.manager_id, 0) for m in managers}
    open_ids = [manager_id for manager_id, free in room.items() if free > 0]
    while remaining and open_ids:
        # hand out in whole rounds while everyone still has room: cheap even for large batches
        per_round = min(*(room[i] for i in open_ids), remaining // len(open_ids))
        if per_round:
            for manager_id in open_ids:
                plan[manager_id] = plan.get(manager_id, 0) + per_round
                room[manager_id] -= per_round
            remaining -= per_round * len(open_ids)
        else:
            for manager_id in open_ids[:remaining]:
                plan[manager_id] = plan.get(manager_id, 0) + 1
                room[manager_id] -= 1
            remaining -= min(remaining, len(open_ids))
        open_ids = [manager_id for manager_id in open_ids if room[manager_id] > 0]
    return remaining


@dataclasses.dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    attempts: int


def retry_decision(attempts_so_far: int, max_retries: int) -> RetryDecision:
    """After a system failure of a task that already lost `attempts_so_far` runs: run it again?"""
    attempts = attempts_so_far + 1
    return RetryDecision(retry=attempts <= max_retries, attempts=attempts)
