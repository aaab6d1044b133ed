"""Running store calls off the event loop: one writer thread, a few reader threads.

SQLite allows one writer at a time; funnelling every write through one thread turns lock waits
into an orderly queue (and keeps PostgreSQL's write load predictable too). Reads run in parallel
on their own threads (WAL lets them proceed while a write is in progress).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from taskfabric.errors import StoreError
from taskfabric.forwarder.store.engine import StoreConflict

__all__ = ["StoreRunner"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StoreRunner:
    """Executors for store calls, awaitable from the event loop or blocking from other threads."""

    def __init__(self, *, read_threads: int = 2, on_error: Callable[[StoreError], None] | None = None) -> None:
        """`on_error` hears of every `StoreError` a call raises (the metrics count them), except a
        `StoreConflict`: that is a working store's answer."""
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._readers = concurrent.futures.ThreadPoolExecutor(read_threads, thread_name_prefix="store-read")
        self._on_error = on_error

    async def write(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run `fn` on the writer thread and await its result."""
        return await asyncio.wrap_future(self._watch(self._writer.submit(fn, *args, **kwargs)))

    async def read(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run `fn` on a reader thread and await its result."""
        return await asyncio.wrap_future(self._watch(self._readers.submit(fn, *args, **kwargs)))

    def write_blocking(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run `fn` on the writer thread and wait (from a thread that is not the event loop)."""
        return self._watch(self._writer.submit(fn, *args, **kwargs)).result()

    def _watch(self, future: concurrent.futures.Future[_R]) -> concurrent.futures.Future[_R]:
        if self._on_error is not None:
            future.add_done_callback(self._report_error)
        return future

    def _report_error(self, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled() or self._on_error is None:
            return
        error = future.exception()
        if isinstance(error, StoreError) and not isinstance(error, StoreConflict):
            self._on_error(error)

    def close(self) -> None:
        """Finish queued calls, then stop the threads."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
