"""`taskfabric bench --scenarios payload`: data-heavy tasks (issue 15).

One run measures, on the bench's fabric:

- **echo 1 MiB**: 1,000 tasks each echoing one 1 MiB bytes argument (random: not compressible)
  with the default Executor: the argument is uploaded once and passed by reference, each result is
  uploaded by its worker and pushed to the client on the results stream; tasks/s from the first
  submit to the last result collected.
- **numpy**: 1,000 tasks echoing float64 arrays of 100 MiB in total (100 KiB each); tasks/s and MB/s.
- **client memory**: the client's peak RSS above its baseline during the echo, against the peak of
  bytes in flight (arguments submitted and results not yet collected, 1 MiB each): the ratio.
- **forwarder / agent peak RSS** during both (sampled every 50 ms).
- **SQL store growth** per 1,000 large results (the SQLite file, its WAL folded in, before and
  after; the growth includes the 2,000 task rows themselves, not only their results).
- **blob disk** before, after, and after everything expired (the finished tasks deleted and the
  blobs swept, as the expiry job does once `result_ttl_s` has passed): back to the baseline or not.

Figures are printed, never asserted. Needs a local fabric (not `--url`): it reads the store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PAYLOAD_TASKS", "echo", "echo_1mib", "payload"]

PAYLOAD_TASKS = 1_000
_MIB = 1024 * 1024
_ARRAY_BYTES = 100 * 1024


def echo(value: Any) -> Any:
    """The payload benchmark's task: its argument back."""
    return value


class _ClientMemory:
    """This process's RSS, sampled every 20 ms, and the peak of bytes in flight."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="client-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


def payload(fabric: Any, progress: Callable[[int], None], *, sampler: Any, dev_root: Path | None) -> dict[str, Any]:
    """One run of the payload scenario; `sampler` watches the forwarder's and agent's RSS."""
    from taskfabric.client import Client, Executor

    store_before = _sql_bytes(dev_root)
    blobs_before = _blob_bytes(dev_root)
    with Client(url=fabric.url, token=fabric.token) as client, Executor(fabric.endpoint_id, client=client) as executor:
        executor.submit(echo, b"warm").result(timeout=120)
        echo_figures = _echo_1mib(executor, progress)
        numpy_figures = _numpy_round_trip(executor, progress)
    store_after = _sql_bytes(dev_root)
    blobs_after = _blob_bytes(dev_root)
    expired = _expire_all(dev_root)
    figures: dict[str, Any] = {**echo_figures, **numpy_figures}
    if store_before is not None and store_after is not None:
        results = 2 * PAYLOAD_TASKS
        figures["sql_growth_mb_per_1000_large_results"] = (store_after - store_before) / 2**20 * 1000 / results
    if blobs_before is not None and blobs_after is not None:
        figures["blob_mb_before"] = blobs_before / 2**20
        figures["blob_mb_after_results"] = blobs_after / 2**20
        figures["blob_mb_after_expiry"] = expired / 2**20 if expired is not None else None
    figures["forwarder_peak_rss_mb"] = sampler.peak_mb("forwarder")
    figures["agent_peak_rss_mb"] = sampler.peak_mb("agent")
    return figures


def echo_1mib(fabric: Any, tasks: int) -> float:
    """The peer comparison's figure: `tasks` echoes of one 1 MiB argument, tasks/s (as Celery's)."""
    from taskfabric.client import Client, Executor

    data = os.urandom(_MIB)
    with Client(url=fabric.url, token=fabric.token) as client, Executor(fabric.endpoint_id, client=client) as executor:
        executor.submit(echo, b"warm").result(timeout=120)
        started = time.perf_counter()
        futures = [executor.submit(echo, data) for _ in range(tasks)]
        for future in futures:
            if len(future.result(timeout=600)) != _MIB:
                raise RuntimeError("an echo came back with the wrong size")
        return tasks / (time.perf_counter() - started)


def _echo_1mib(executor: Any, progress: Callable[[int], None]) -> dict[str, Any]:
    data = os.urandom(_MIB)
    memory = _ClientMemory()
    started = time.perf_counter()
    futures = [executor.submit(echo, data) for _ in range(PAYLOAD_TASKS)]
    in_flight_peak = PAYLOAD_TASKS * _MIB  # every argument submitted before the first result is collected
    for collected, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        if len(future.result()) != _MIB:
            raise RuntimeError("an echo came back with the wrong size")
        if collected % 100 == 0:
            progress(100)
    elapsed = time.perf_counter() - started
    del futures
    growth = memory.stop()
    return {
        "echo_1mib_tasks_per_s": PAYLOAD_TASKS / elapsed,
        "echo_1mib_mb_per_s": 2 * PAYLOAD_TASKS * _MIB / 2**20 / elapsed,
        "client_peak_rss_growth_mb": growth / 2**20,
        "bytes_in_flight_mb": in_flight_peak / 2**20,
        "client_rss_per_byte_in_flight": growth / in_flight_peak,
    }


def _numpy_round_trip(executor: Any, progress: Callable[[int], None]) -> dict[str, Any]:
    import numpy

    arrays = [numpy.random.default_rng(seed).random(_ARRAY_BYTES // 8) for seed in range(PAYLOAD_TASKS)]
    started = time.perf_counter()
    futures = {executor.submit(echo, array): index for index, array in enumerate(arrays)}
    for future in concurrent.futures.as_completed(futures):
        if not numpy.array_equal(future.result(), arrays[futures[future]]):
            raise RuntimeError("a numpy array came back changed")
    elapsed = time.perf_counter() - started
    progress(PAYLOAD_TASKS)
    total = sum(array.nbytes for array in arrays)
    return {
        "numpy_tasks_per_s": PAYLOAD_TASKS / elapsed,
        "numpy_mb_per_s": 2 * total / 2**20 / elapsed,
        "numpy_total_mb": total / 2**20,
    }


def _sql_bytes(root: Path | None) -> int | None:
    """The SQLite store's size once its write-ahead log is folded in (the WAL is reused, not growth)."""
    if root is None:
        return None
    import sqlite3

    with contextlib.closing(sqlite3.connect(root / "forwarder.db", timeout=30)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(path.stat().st_size for path in root.glob("forwarder.db*") if path.is_file())


def _blob_bytes(root: Path | None) -> int | None:
    if root is None or not (root / "blobs").is_dir():
        return None
    from taskfabric.forwarder.blobs import FilesystemBlobStore

    return FilesystemBlobStore(root / "blobs").usage_bytes()


def _expire_all(root: Path | None) -> int | None:
    """Expire everything as the expiry job does once `result_ttl_s` has passed: delete the
    finished tasks (with their blobs), then sweep the blobs written before then (the arguments
    uploaded by reference among them). The blob bytes left."""
    if root is None:
        return None
    from taskfabric.forwarder.blobs import FilesystemBlobStore
    from taskfabric.forwarder.store import Store

    blobs = FilesystemBlobStore(root / "blobs")
    store = Store.open(f"sqlite:///{root / 'forwarder.db'}", create=False, blobs=blobs)
    try:
        expired_before = time.time() + 1
        while store.tasks.delete_expired(expired_before) > 0:
            pass
        store.tasks.sweep_blobs(expired_before)
    finally:
        store.close()
    return blobs.usage_bytes()
