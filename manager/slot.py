"""A worker's slot: shared memory between a worker and its manager.

It holds the id of the task the worker is running (16 bytes, zeros between tasks: when a worker
dies, the manager knows exactly which task it was running) and a cancel mark (1 byte the manager
bumps after writing a `CancelTasks` frame to the worker's pipe, so the worker reads its pipe
before a task only when there is news).
"""

from __future__ import annotations

import mmap
import os

__all__ = ["CANCEL_MARK_OFFSET", "EMPTY_TASK_ID", "SLOT_BYTES", "RunningSlot"]

#: the running task's id (16 bytes), then the cancel mark (1 byte)
SLOT_BYTES = 17
CANCEL_MARK_OFFSET = 16
EMPTY_TASK_ID = bytes(16)


class RunningSlot:
    """The shared-memory record of the task a worker is running (its 16-byte id, zeros between
    tasks), and a cancel mark: a byte the manager bumps after writing a `CancelTasks` frame to
    the worker's pipe, so the worker reads its pipe before a task only when there is news."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, SLOT_BYTES)
        finally:
            os.close(fd)

    def cancel_mark(self) -> int:
        return self._map[CANCEL_MARK_OFFSET]

    def set(self, task_id: bytes) -> None:
        self._map[0:16] = task_id

    def clear(self) -> None:
        self._map[0:16] = EMPTY_TASK_ID
