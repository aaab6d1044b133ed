"""The ack point's bookkeeping (see ledger.py): a task message is acked once each of its new tasks
is safe, written to the ledger or already answered. The agent's loop thread owns it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable

from taskfabric.transport import Delivery

__all__ = ["AckTracker"]


@dataclasses.dataclass(eq=False)
class _Unacked:
    """A task message whose new tasks are not all safe yet (written, or answered)."""

    delivery: Delivery
    unsafe: set[uuid.UUID]


class AckTracker:
    """Which task messages still carry tasks that are not safe."""

    def __init__(self) -> None:
        self._unacked: dict[uuid.UUID, _Unacked] = {}  # task -> the message it came in

    def track(self, delivery: Delivery, task_ids: set[uuid.UUID]) -> None:
        """`delivery` carried the new tasks `task_ids`: ack it once they are all safe."""
        pending = _Unacked(delivery, task_ids)
        for task_id in task_ids:
            self._unacked[task_id] = pending

    def now_safe(self, task_ids: Iterable[uuid.UUID]) -> list[Delivery]:
        """`task_ids` are safe now; returns the messages to ack (all their tasks are safe)."""
        to_ack = []
        for task_id in task_ids:
            pending = self._unacked.pop(task_id, None)
            if pending is not None:
                pending.unsafe.discard(task_id)
                if not pending.unsafe:
                    to_ack.append(pending.delivery)
        return to_ack
