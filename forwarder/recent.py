"""Ids seen recently, remembered for a while without a timestamp per entry: two generations,
rotated every `ttl_s`, so an entry lives between `ttl_s` and `2 * ttl_s` seconds. Keyed by the
ids' integers (hashed in C; a UUID hashes through a Python-level method).

The results stream uses two of these: tasks this forwarder accepted recently (with their owner)
and tasks it saw finish recently. A subscription to a task it just accepted, and has not seen
finish, needs no database read: its result will come through the hub. Used on the event loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["RecentIds"]

_V = TypeVar("_V")


class RecentIds(Generic[_V]):
    """id -> value for a while (see the module docstring)."""

    def __init__(self, ttl_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._current: dict[int, _V] = {}
        self._previous: dict[int, _V] = {}
        self._rotated_at = clock()

    def add_many(self, ids: Iterable[uuid.UUID], value: _V) -> None:
        self._rotate_if_due()
        self._current.update(dict.fromkeys((task_id.int for task_id in ids), value))

    def get(self, task_id: uuid.UUID) -> _V | None:
        self._rotate_if_due()
        key = task_id.int
        found = self._current.get(key)
        return found if found is not None else self._previous.get(key)

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, uuid.UUID):
            return False
        key = task_id.int
        return key in self._current or key in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _rotate_if_due(self) -> None:
        now = self._clock()
        if now - self._rotated_at >= self._ttl_s:
            self._previous, self._current = self._current, {}
            self._rotated_at = now
