"""Results that workers uploaded, kept in memory until their result is reported (issue 15).

A worker uploads a large result (`PUT /v1/tasks/{id}/result-blob`) moments before its `Result`
naming the blob comes back through the broker. The forwarder that took the upload keeps the bytes
here; when the ingest stores that result, `attach` hands them to the finished record, and the
results stream pushes them to the waiting client in its frame. The client is spared a
`GET /v1/tasks/{id}/result` per task, the forwarder a request, a blob read and a digest.

Bounded: at most `max_bytes` in all, and only uploads of at most `max_item_bytes`; the oldest go
first. An upload taken by another replica, evicted, or reported after a restart is not here: its
record keeps the reference and the client downloads it as before. Thread-safe (uploads arrive on
the event loop, results on the ingest thread).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

from taskfabric.forwarder.records import TaskRecord

__all__ = ["FreshUploads"]


class FreshUploads:
    """Uploaded result bytes by blob name, oldest first, within a byte budget."""

    def __init__(self, *, max_bytes: int, max_item_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes, max_bytes)
        self._items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def fits(self, size: int) -> bool:
        """Whether an upload of `size` bytes would be kept."""
        return 0 < size <= self.max_item_bytes

    def remember(self, name: str, data: bytes) -> None:
        if not self.fits(len(data)):
            return
        with self._lock:
            old = self._items.pop(name, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[name] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _name, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def take(self, name: str) -> bytes | None:
        with self._lock:
            data = self._items.pop(name, None)
            if data is not None:
                self._bytes -= len(data)
        return data

    def attach(self, records: Iterable[TaskRecord]) -> int:
        """Give each record whose result is an upload held here its bytes (and forget them);
        returns how many. A record with its bytes is sent whole on the results stream."""
        attached = 0
        for record in records:
            if record.result is None and record.result_blob is not None:
                data = self.take(record.result_blob)
                if data is not None and len(data) == record.result_size:
                    record.result = data
                    attached += 1
        return attached
