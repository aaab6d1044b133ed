"""Blobs in a dict: for unit tests of domain logic (never used by a running forwarder)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from taskfabric.forwarder.blobs.base import CHUNK_BYTES, BlobMissing, BlobStore

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore(BlobStore):
    """Blobs kept in memory with the time they were written."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def _write(self, name: str, data: bytes | memoryview) -> None:
        with self._lock:
            self.blobs[name] = (bytes(data), time.time())

    def open_chunks(self, name: str) -> Iterator[bytes]:
        with self._lock:
            found = self.blobs.get(name)
        if found is None:
            raise BlobMissing(f"blob {name} is missing")
        data = found[0]
        return iter([data[start : start + CHUNK_BYTES] for start in range(0, len(data), CHUNK_BYTES)])

    def delete(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                self.blobs.pop(name, None)

    def sweep(self, before: float) -> int:
        with self._lock:
            old = [name for name, (_, written) in self.blobs.items() if written < before]
            for name in old:
                del self.blobs[name]
        return len(old)

    def usage_bytes(self) -> int:
        with self._lock:
            return sum(len(data) for data, _ in self.blobs.values())
