"""The ingest thread's inbox: messages queued per endpoint and taken in turns.

A single FIFO would let one endpoint that floods its result queue (up to `result_prefetch` messages
in hand at any time, each up to `max_results_per_message` results) put a long line of store work
in front of every other endpoint's results. Here each source (an endpoint; `None` for the
dead-letter queue) has its own line. A group for one store transaction is taken so:

- when one source alone has messages waiting, up to `max_items` of them or `max_weight` (results):
  big transactions for throughput;
- when several have, one message of each (one round, starting after the source the previous group
  started with), still within `max_items` and `max_weight`: a small transaction.

A result from a quiet endpoint is therefore in the next transaction after the one in progress
(at most `max_weight` results), and that next one holds one message of each busy endpoint.
`active_sources(window_s)` says how many sources sent something lately: the ingest keeps its
transactions short while more than one does (a flood's big transactions are what another
endpoint's result waits behind), and long for throughput while one endpoint is alone.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

_T = TypeVar("_T")


class FairQueue(Generic[_T]):
    """Items per source, taken in turns (see the module docstring). Thread-safe; `put` never blocks."""

    def __init__(
        self, weight: Callable[[_T], int] = lambda item: 1, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._weight = weight
        self._lines: dict[Hashable, collections.deque[_T]] = {}
        #: sources with items, in turn order (the head goes first in the next group)
        self._turns: collections.deque[Hashable] = collections.deque()
        self._size = 0
        self._closed = False
        self._ready = threading.Condition()
        #: source -> when it last put an item (monotonic seconds)
        self._last_put: dict[Hashable, float] = {}
        self._clock = clock

    def put(self, source: Hashable, item: _T) -> None:
        with self._ready:
            line = self._lines.get(source)
            if line is None:
                line = self._lines[source] = collections.deque()
                self._turns.append(source)
            line.append(item)
            self._size += 1
            self._last_put[source] = self._clock()
            self._ready.notify()

    def active_sources(self, window_s: float) -> int:
        """How many sources put an item within the last `window_s` seconds."""
        horizon = self._clock() - window_s
        with self._ready:
            for source in [source for source, at in self._last_put.items() if at < horizon]:
                del self._last_put[source]
            return len(self._last_put)

    def close(self) -> None:
        """Wake a waiting `take_group` (it returns what is there, or nothing)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __len__(self) -> int:
        with self._ready:
            return self._size

    def take_group(self, *, max_items: int, max_weight: int, timeout_s: float) -> list[_T]:
        """Up to `max_items` items (and about `max_weight` weight: at least one item) in turns;
        waits up to `timeout_s` for the first one. Empty on timeout or after `close`."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._size > 0 or self._closed, timeout_s):
                return []
            return self._take_turns(max_items, max_weight)

    def _take_turns(self, max_items: int, max_weight: int) -> list[_T]:
        group: list[_T] = []
        weight = 0
        first = self._turns[0] if self._turns else None
        if len(self._turns) > 1:  # contended: one round
            max_items = min(max_items, len(self._turns))
        while self._turns and len(group) < max_items:
            source = self._turns[0]
            line = self._lines[source]
            item = line[0]
            item_weight = self._weight(item)
            if group and weight + item_weight > max_weight:
                break
            line.popleft()
            self._size -= 1
            group.append(item)
            weight += item_weight
            self._turns.rotate(-1)
            if not line:
                del self._lines[source]
                self._turns.remove(source)
        self._next_group_after(first)
        return group

    def _next_group_after(self, first: Hashable | None) -> None:
        """Whoever started this group goes last in the next (when it still has items)."""
        if first is not None and first in self._lines and len(self._turns) > 1:
            self._turns.remove(first)
            self._turns.append(first)
