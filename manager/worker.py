"""The worker process: reads task batches from its manager's pipe and runs them one by one.

Results go back in small batches: a result waits at most `FLUSH_AFTER_S` (a background thread
flushes it even while the next task runs), and all are flushed when the batch is done. So that the
manager knows exactly which task a dead worker was running, the worker writes the id of the task
it is running into a 16-byte shared-memory *slot* (zeros between tasks): a task is blamed for a
death only if it was in that slot.

Cancellation: the manager writes a `CancelTasks` frame to the worker's pipe naming tasks of its
batch. Before starting each task (after putting it in the slot) the worker reads such frames
without waiting, and skips a cancelled task, answering `TASK_CANCELLED`. For a running task the
manager also sends SIGTERM: the worker then reads the frames and, if its running task is named,
exits at once (as SIGTERM's default would); a task that installed its own SIGTERM handler (or
ignores it) gets the grace period, then SIGKILL. A SIGTERM naming no running task (a scheduler
cancelling the whole job) is ignored, as before: the manager decides when workers stop.

Started by the manager as ``python -m taskfabric.manager.worker --fd-in R --fd-out W --slot PATH ...``.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import select
import signal
import sys
import threading
import time
import uuid
from types import FrameType
from typing import Any

from taskfabric.errors import ErrorCode, ProtocolError
from taskfabric.manager.execution import TaskRunner
from taskfabric.manager.frames import read_frame, write_frame
from taskfabric.protocol import CancelTasks, Result, ResultBatch, Task, TaskBatch, TaskError, pack, unpack

__all__ = ["EXIT_CANCELLED", "FLUSH_AFTER_S", "CancelWatch", "ResultWriter", "RunningSlot", "main", "serve"]

#: the longest a finished result waits in the worker before it is sent
FLUSH_AFTER_S = 0.001
#: a worker ending itself because its running task was cancelled exits like SIGTERM's default
EXIT_CANCELLED = 128 + signal.SIGTERM
_EMPTY = bytes(16)


class RunningSlot:
    """The 16-byte shared-memory record of the task a worker is running."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 16)
        finally:
            os.close(fd)

    def set(self, task_id: bytes) -> None:
        self._map[0:16] = task_id

    def clear(self) -> None:
        self._map[0:16] = _EMPTY


class ResultWriter:
    """Buffers results and writes them as one frame, at the latest `flush_after_s` after the first."""

    def __init__(self, fd: int, flush_after_s: float = FLUSH_AFTER_S) -> None:
        self._fd = fd
        self._flush_after_s = flush_after_s
        self._buffer: list[Result] = []
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        threading.Thread(target=self._flush_aged, name="result-flusher", daemon=True).start()

    def add(self, result: Result) -> None:
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
                self._wake.set()
            self._buffer.append(result)

    def flush(self) -> None:
        with self._lock:
            self._write_locked()

    def try_flush(self, timeout_s: float) -> None:
        """Flush unless the lock stays taken for `timeout_s` (from a signal handler, which may
        have interrupted this very thread while it held the lock)."""
        if self._lock.acquire(timeout=timeout_s):
            try:
                self._write_locked()
            except OSError:
                pass
            finally:
                self._lock.release()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()

    def _write_locked(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            write_frame(self._fd, pack(ResultBatch(results=batch)))

    def _flush_aged(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while not self._closed:
                with self._lock:
                    if not self._buffer:
                        break
                    wait_s = self._oldest + self._flush_after_s - time.monotonic()
                    if wait_s <= 0:
                        try:
                            self._write_locked()
                        except OSError:
                            return  # the manager is gone; the main thread finds out too
                        break
                time.sleep(max(wait_s, 0.0002))


class CancelWatch:
    """The worker's cancel state: the task it runs, the cancelled ids of its batch, and the
    SIGTERM handler that ends the worker when the running task is cancelled."""

    def __init__(self, fd_in: int, writer: ResultWriter) -> None:
        self._fd_in = fd_in
        self._writer = writer
        self.current: uuid.UUID | None = None
        self.cancelled: set[uuid.UUID] = set()
        self._reading = False
        self._handler = self._on_sigterm

    def install(self) -> None:
        """(Re)install the SIGTERM handler: a task may have replaced it."""
        if signal.getsignal(signal.SIGTERM) is not self._handler:
            signal.signal(signal.SIGTERM, self._handler)

    def starting(self, task_id: uuid.UUID) -> bool:
        """The worker is about to run `task_id` (already in its slot): False if it is cancelled."""
        self.install()
        self.current = task_id
        self.read_pending()
        return task_id not in self.cancelled

    def finished(self) -> None:
        self.current = None

    def add(self, message: CancelTasks) -> None:
        self.cancelled.update(message.task_ids)

    def batch_done(self) -> None:
        """The manager only names tasks of the batch in hand: the next batch starts afresh."""
        self.cancelled.clear()

    def read_pending(self) -> None:
        """Read the `CancelTasks` frames waiting in the pipe, without blocking. While a batch
        runs, the manager writes nothing else to this pipe."""
        self._reading = True
        try:
            while select.select([self._fd_in], [], [], 0)[0]:
                frame = read_frame(self._fd_in)
                if frame is None:
                    return
                message = unpack(frame)
                if not isinstance(message, CancelTasks):
                    raise ProtocolError(f"a {type(message).__name__} arrived while a batch was running")
                self.add(message)
        finally:
            self._reading = False

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.current is None:
            return  # between tasks: not a cancellation (e.g. a scheduler ending the job)
        if not self._reading:  # else the interrupted read finishes and `starting` decides
            self.read_pending()
        if self.current in self.cancelled:
            self._writer.try_flush(1.0)  # results of the batch's earlier tasks
            os._exit(EXIT_CANCELLED)


def serve(fd_in: int, writer: ResultWriter, runner: TaskRunner, slot: RunningSlot) -> None:
    """Run batches from `fd_in` until it closes."""
    watch = CancelWatch(fd_in, writer)
    watch.install()
    while True:
        frame = read_frame(fd_in)
        if frame is None:
            return
        message: Any = unpack(frame)
        if isinstance(message, CancelTasks):
            continue  # about tasks already answered
        if not isinstance(message, TaskBatch):
            raise ProtocolError(f"expected a task batch, got a {type(message).__name__}")
        batch = message
        if batch.client_python:
            runner.client_python = batch.client_python
        runner.add_functions(batch.functions)
        for task in batch.tasks:
            slot.set(task.task_id.bytes)
            result = runner.run(task) if watch.starting(task.task_id) else _cancelled(task)
            watch.finished()
            slot.clear()
            writer.add(result)
        writer.flush()
        watch.batch_done()


def _cancelled(task: Task) -> Result:
    now = time.time()
    return Result(
        task_id=task.task_id,
        ok=False,
        error=TaskError(code=ErrorCode.TASK_CANCELLED, message="the task was cancelled before it started"),
        worker_python=platform.python_version(),
        received_at=now,
        finished_at=now,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskfabric-worker")
    parser.add_argument("--fd-in", type=int, required=True)
    parser.add_argument("--fd-out", type=int, required=True)
    parser.add_argument("--slot", required=True, help="the 16-byte shared-memory file of the running task id")
    parser.add_argument("--max-result-bytes", type=int, required=True)
    parser.add_argument("--worker-id", default="0")
    args = parser.parse_args(argv)
    # The manager decides when workers stop: a scheduler cancelling a job signals every process in
    # it, and a task should be lost once (with its manager), not once more with its worker.
    # SIGTERM is ignored too, except when it stops a cancelled task (`CancelWatch`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["TASKFABRIC_WORKER_ID"] = args.worker_id
    writer = ResultWriter(args.fd_out)
    try:
        serve(args.fd_in, writer, TaskRunner(max_result_bytes=args.max_result_bytes), RunningSlot(args.slot))
        writer.close()
    except ProtocolError as exc:
        print(f"worker {args.worker_id}: bad frame from the manager: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # the manager is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
