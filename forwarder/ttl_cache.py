"""A small bounded cache whose entries expire: for facts that change rarely and are read on the
hot path (who owns a function or an endpoint, which token is whose). Thread-safe."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["TTLCache"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class TTLCache(Generic[_K, _V]):
    """key -> value for `ttl_s` seconds; the least recently used go first when full."""

    def __init__(
        self, ttl_s: float, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[_K, tuple[_V, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, expires_at = entry
            if expires_at <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> None:
        if self._ttl_s <= 0 or self._max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = (value, self._clock() + self._ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def discard(self, key: _K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
