"""A bounded, thread-safe cache of accepted tokens (by hash) until they expire."""

from __future__ import annotations

import collections
import threading

from taskfabric.forwarder.records import Identity

__all__ = ["TokenCache"]


class TokenCache:
    """token hash -> (identity, expires_at); least recently used entries go first when full."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: collections.OrderedDict[str, tuple[Identity, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, token_hash: str, *, now: float) -> Identity | None:
        with self._lock:
            entry = self._entries.get(token_hash)
            if entry is None:
                return None
            identity, expires_at = entry
            if expires_at <= now:
                del self._entries[token_hash]
                return None
            self._entries.move_to_end(token_hash)
            return identity

    def put(self, token_hash: str, identity: Identity, *, expires_at: float) -> None:
        if self._max_entries <= 0:
            return
        with self._lock:
            self._entries[token_hash] = (identity, expires_at)
            self._entries.move_to_end(token_hash)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
