"""The worker process: reads task batches from its manager's pipe and runs them one by one.

Results go back in small batches: a result waits at most `FLUSH_AFTER_S` (10 ms; a background
thread flushes it even while the next task runs), and all are flushed when the batch is done. A
task's start is reported (a `TaskEvents` frame) once it has run `--report-start-after` seconds
(default `REPORT_START_AFTER_S`, 0.1); a shorter task is reported by its result alone. So that the
manager knows exactly which task a dead worker was running, the worker writes the id of the task
it is running into a 16-byte shared-memory *slot* (zeros between tasks): a task is blamed for a
death only if it was in that slot. Each task runs in its own working directory, environment and
output files (`surroundings.py`).

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

import _signal
import argparse
import dataclasses
import math
import os
import platform
import select
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from taskfabric.errors import ErrorCode, ProtocolError
from taskfabric.exit_codes import RET_CRASHED
from taskfabric.logs import run_guarded
from taskfabric.malloc_tuning import tune_malloc
from taskfabric.manager.execution import TaskRunner
from taskfabric.manager.frames import read_frame, write_frame
from taskfabric.manager.pool import REPORT_START_AFTER_S
from taskfabric.manager.slot import RunningSlot
from taskfabric.manager.surroundings import TaskSurroundings
from taskfabric.protocol import (
    CancelTasks,
    Result,
    ResultBatch,
    Task,
    TaskBatch,
    TaskError,
    TaskEvents,
    TaskStarted,
    pack,
    unpack,
)

__all__ = [
    "EXIT_CANCELLED",
    "FLUSH_AFTER_S",
    "REPORT_START_AFTER_S",
    "CancelWatch",
    "ResultWriter",
    "RunningSlot",
    "main",
    "serve",
]

#: the longest a finished result waits in the worker while later tasks of its batch run (the last
#: result of a batch is sent at once). Not longer than `REPORT_START_AFTER_S`, so that in a batch
#: of short tasks each result falls due before the start the flusher sleeps until: a batch wakes
#: the flusher thread about once per `FLUSH_AFTER_S`, not once per task
FLUSH_AFTER_S = 0.01
#: a worker ending itself because its running task was cancelled exits like SIGTERM's default
EXIT_CANCELLED = 128 + signal.SIGTERM


class ResultWriter:
    """Buffers results and writes them as one frame, at the latest `flush_after_s` after the first.

    The start of the running task is written (as a `TaskEvents` frame) once the task has run
    `report_start_after_s`; a task that finishes sooner is reported by its result alone, so short
    tasks cost no extra message anywhere on the way to the forwarder. The flusher thread is woken
    only when something falls due before the time it already sleeps until: noting a start or
    adding the last result of a batch (flushed by the caller right after) costs the running thread
    an assignment, and a stream of short batches wakes the flusher about once per
    `report_start_after_s`, not once per task (a thread wake-up costs more than a short task)."""

    def __init__(
        self, fd: int, flush_after_s: float = FLUSH_AFTER_S, report_start_after_s: float = REPORT_START_AFTER_S
    ) -> None:
        self._fd = fd
        self._flush_after_s = flush_after_s
        self._report_start_after_s = report_start_after_s
        self._buffer: list[Result] = []
        #: the running task's start (id, wall-clock time), not reported yet, and when it is due
        #: (monotonic); the `TaskStarted` is built only if it is reported
        self._start: tuple[uuid.UUID, float, float] | None = None
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: when the flusher wakes up next by itself (monotonic; inf: not until woken)
        self._sleep_until = math.inf
        self._closed = False
        threading.Thread(target=self._flush_aged, name="result-flusher", daemon=True).start()

    def add(self, result: Result, *, flushed_next: bool = False) -> None:
        """Buffer a result. `flushed_next`: the caller flushes right after (no need to wake the
        flusher for it)."""
        with self._lock:
            start = self._start
            if start is not None and (start[0] is result.task_id or start[0] == result.task_id):
                self._start = None
            if not self._buffer:
                self._oldest = time.monotonic()
                if not flushed_next:
                    self._wake_before(self._oldest + self._flush_after_s)
            self._buffer.append(result)

    def started(self, task_id: uuid.UUID, started_at: float) -> None:
        """The worker starts running `task_id` (at `started_at`, wall clock)."""
        with self._lock:
            due = time.monotonic() + self._report_start_after_s
            self._start = (task_id, started_at, due)
            self._wake_before(due)

    def flush(self) -> None:
        with self._lock:
            self._write_locked(time.monotonic(), results=True)

    def try_flush(self, timeout_s: float) -> None:
        """Flush unless the lock stays taken for `timeout_s` (from a signal handler, which may
        have interrupted this very thread while it held the lock)."""
        if self._lock.acquire(timeout=timeout_s):
            try:
                self._write_locked(time.monotonic(), results=True)
            except OSError:
                pass
            finally:
                self._lock.release()

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()

    def _wake_before(self, due: float) -> None:
        if due < self._sleep_until:
            self._sleep_until = due
            self._wake.set()

    def _write_locked(self, now: float, *, results: bool) -> None:
        start = self._start
        if start is not None and start[2] <= now:
            self._start = None
            event = TaskStarted(task_id=start[0], started_at=start[1])
            write_frame(self._fd, pack(TaskEvents(started=[event])))
        if results and self._buffer:
            batch, self._buffer = self._buffer, []
            write_frame(self._fd, pack(ResultBatch(results=batch)))

    def _wait_locked(self, now: float) -> float | None:
        """How long the flusher may sleep (None: until woken)."""
        due = [self._oldest + self._flush_after_s] if self._buffer else []
        if self._start is not None:
            due.append(self._start[2])
        return max(min(due) - now, 0.0002) if due else None

    def _flush_aged(self) -> None:
        """The flusher thread: a worker whose flusher died would hold its results for good, so an
        unexpected error ends the whole worker (logged, `RET_CRASHED`): the manager replaces it
        and the interchange retries its running task."""
        try:
            self._flush_until_closed()
        except Exception:
            traceback.print_exc()
            print("worker: the result flusher failed; exiting so the manager replaces this worker", file=sys.stderr)
            sys.stderr.flush()
            os._exit(RET_CRASHED)

    def _flush_until_closed(self) -> None:
        while not self._closed:
            with self._lock:
                now = time.monotonic()
                try:
                    self._write_locked(now, results=bool(self._buffer) and now >= self._oldest + self._flush_after_s)
                except OSError:
                    return  # the manager is gone; the main thread finds out too
                wait_s = self._wait_locked(now)
                self._sleep_until = math.inf if wait_s is None else now + wait_s
                self._wake.clear()
            self._wake.wait(wait_s)


class CancelWatch:
    """The worker's cancel state: the task it runs, the cancelled ids of its batch, and the
    SIGTERM handler that ends the worker when the running task is cancelled."""

    def __init__(self, fd_in: int, writer: ResultWriter, slot: RunningSlot) -> None:
        self._fd_in = fd_in
        self._writer = writer
        #: the pipe is read before a task only when the slot's cancel mark moved
        self._slot = slot
        self._seen_mark = -1
        self.current: uuid.UUID | None = None
        self.cancelled: set[uuid.UUID] = set()
        self._reading = False
        self._handler = self._on_sigterm
        self._pending = select.poll()  # registered once: polled before every task
        self._pending.register(fd_in, select.POLLIN)

    def install(self) -> None:
        """(Re)install the SIGTERM handler: a task may have replaced it."""
        # `_signal`, the C module under `signal`: its getsignal skips the enum conversion, which
        # raised and caught a ValueError per call (microseconds on every task)
        if _signal.getsignal(signal.SIGTERM) is not self._handler:
            signal.signal(signal.SIGTERM, self._handler)

    def starting(self, task_id: uuid.UUID) -> bool:
        """The worker is about to run `task_id` (already in its slot): False if it is cancelled."""
        self.install()
        self.current = task_id
        if (mark := self._slot.cancel_mark()) != self._seen_mark:
            self._seen_mark = mark  # before reading: a later bump is seen before the next task
            self.read_pending()
        return not (self.cancelled and task_id in self.cancelled)

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
            while self._pending.poll(0):
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


def serve(
    fd_in: int, writer: ResultWriter, runner: TaskRunner, slot: RunningSlot, surroundings: TaskSurroundings
) -> None:
    """Run batches from `fd_in` until it closes."""
    watch = CancelWatch(fd_in, writer, slot)
    watch.install()
    with surroundings.active():
        while (batch := _next_batch(fd_in)) is not None:
            if batch.client_python:
                runner.client_python = batch.client_python
            runner.add_functions(batch.functions)
            last = len(batch.tasks) - 1
            for index, task in enumerate(batch.tasks):
                slot.set(task.task_id.bytes)
                result = _run(task, runner, writer, surroundings) if watch.starting(task.task_id) else _cancelled(task)
                watch.finished()
                slot.clear()
                writer.add(result, flushed_next=index == last)
            writer.flush()
            watch.batch_done()


def _next_batch(fd_in: int) -> TaskBatch | None:
    """The next task batch from the manager (None when the pipe closes); late cancels of tasks
    already answered are skipped."""
    while (frame := read_frame(fd_in)) is not None:
        message: Any = unpack(frame)
        if isinstance(message, TaskBatch):
            return message
        if not isinstance(message, CancelTasks):
            raise ProtocolError(f"expected a task batch, got a {type(message).__name__}")
    return None


def _run(task: Task, runner: TaskRunner, writer: ResultWriter, surroundings: TaskSurroundings) -> Result:
    """Run one task in its own surroundings (directory, environment, captured output)."""
    writer.started(task.task_id, time.time())
    scope = surroundings.enter(task)
    try:
        result = runner.run(task)
    finally:
        output = surroundings.leave(scope)
    if output.stdout or output.stderr:
        result = dataclasses.replace(result, stdout=output.stdout, stderr=output.stderr)
    return result


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
    """The worker process: an unexpected error is logged (to the worker's log) and ends it with
    `RET_CRASHED`; the manager replaces it."""
    return run_guarded(lambda: _serve_main(argv), what="the worker", crash_code=RET_CRASHED)


def _serve_main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="taskfabric-worker")
    parser.add_argument("--fd-in", type=int, required=True)
    parser.add_argument("--fd-out", type=int, required=True)
    parser.add_argument("--slot", required=True, help="the 16-byte shared-memory file of the running task id")
    parser.add_argument("--max-result-bytes", type=int, required=True)
    parser.add_argument("--worker-id", default="0")
    parser.add_argument("--max-output-bytes", type=int, default=65536, help="kept of each task's stdout and stderr")
    parser.add_argument("--task-workdir", type=Path, required=True, help="tasks run in TASK_WORKDIR/worker-HOST-PID")
    parser.add_argument("--keep-task-workdirs", action="store_true")
    parser.add_argument(
        "--report-start-after", type=float, default=REPORT_START_AFTER_S, help="report a task's start after this (s)"
    )
    args = parser.parse_args(argv)
    # The manager decides when workers stop: a scheduler cancelling a job signals every process in
    # it, and a task should be lost once (with its manager), not once more with its worker.
    # SIGTERM is ignored too, except when it stops a cancelled task (`CancelWatch`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["TASKFABRIC_WORKER_ID"] = args.worker_id
    tune_malloc()  # arguments and results of a MiB and more, task after task, without page faults
    writer = ResultWriter(args.fd_out, report_start_after_s=max(0.0, args.report_start_after))
    surroundings = TaskSurroundings(
        max_output_bytes=args.max_output_bytes, workdir_root=args.task_workdir, keep_workdirs=args.keep_task_workdirs
    )
    try:
        runner = TaskRunner(max_result_bytes=args.max_result_bytes)
        serve(args.fd_in, writer, runner, RunningSlot(args.slot), surroundings)
        writer.close()
    except ProtocolError as exc:
        print(f"worker {args.worker_id}: bad frame from the manager: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0  # the manager is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
