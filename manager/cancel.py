"""The manager's cancel bookkeeping: plain state, no processes or sockets (unit-tested alone).

When the interchange cancels tasks, the manager answers each one it holds exactly once:

- queued here, not on a worker: dropped at once, answered `TASK_CANCELLED`;
- on a worker, not started: the worker is told (a `CancelTasks` frame on its pipe) and skips it,
  answering `TASK_CANCELLED` itself;
- running: the worker is told and sent SIGTERM; if it is still running the task `grace_period_s`
  later it is SIGKILLed. Its death is the cancellation, not a crash: the task is answered
  `TASK_CANCELLED` (never `WORKER_LOST`, never retried) and a fresh worker takes its place.

`CancelBook` remembers which held tasks are cancelled (so one that comes back from a dead worker is
answered instead of queued again) and which workers are due a SIGKILL, until they are answered.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable

__all__ = ["DEFAULT_CANCEL_GRACE_PERIOD_S", "CancelBook", "PendingKill"]

#: used when a `CancelTasks` carries no grace period (the agent always sends its setting)
DEFAULT_CANCEL_GRACE_PERIOD_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class PendingKill:
    """Worker `worker_index` got SIGTERM for `task_id`; SIGKILL it at `kill_at` (monotonic)."""

    worker_index: int
    task_id: uuid.UUID
    kill_at: float


class CancelBook:
    """Cancelled tasks not yet answered, and the SIGKILLs they may still need."""

    def __init__(self) -> None:
        self._cancelled: set[uuid.UUID] = set()
        self._kills: dict[int, PendingKill] = {}

    def mark(self, task_ids: Iterable[uuid.UUID]) -> None:
        """These held tasks are cancelled (each will be answered once)."""
        self._cancelled.update(task_ids)

    def is_cancelled(self, task_id: uuid.UUID) -> bool:
        return task_id in self._cancelled

    def schedule_kill(self, worker_index: int, task_id: uuid.UUID, *, now: float, grace_period_s: float) -> None:
        """The worker running `task_id` was sent SIGTERM: SIGKILL it after the grace period."""
        self._kills[worker_index] = PendingKill(worker_index, task_id, now + grace_period_s)

    def due_kills(self, now: float) -> list[PendingKill]:
        """Kills whose grace period is over (each returned once)."""
        due = [kill for kill in self._kills.values() if kill.kill_at <= now]
        for kill in due:
            del self._kills[kill.worker_index]
        return due

    def next_kill_in_s(self, now: float) -> float | None:
        """Seconds until the next kill is due (None when none is pending)."""
        if not self._kills:
            return None
        return max(0.0, min(kill.kill_at for kill in self._kills.values()) - now)

    def worker_died(self, worker_index: int, running: uuid.UUID | None) -> bool:
        """A worker died while running `running`: True if that was the cancellation (answer the
        task `TASK_CANCELLED`), False if it is an ordinary crash."""
        kill = self._kills.pop(worker_index, None)
        if running is None:
            return False
        return (kill is not None and kill.task_id == running) or running in self._cancelled

    def answered(self, task_ids: Iterable[uuid.UUID]) -> None:
        """These tasks' results (cancelled or not: a task may finish before its cancel lands)
        are on their way: forget them, and any kill scheduled for them."""
        if not (self._cancelled or self._kills):  # the usual case: nothing to forget, no set built
            return
        done = set(task_ids)
        if not done:
            return
        self._cancelled.difference_update(done)
        for worker_index in [index for index, kill in self._kills.items() if kill.task_id in done]:
            del self._kills[worker_index]

    @property
    def pending(self) -> int:
        """Cancelled tasks not answered yet."""
        return len(self._cancelled)
