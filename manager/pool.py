"""The manager's pool of worker processes, each behind a pair of pipes and a shared-memory slot.

A worker is given a batch only when it is idle (so the manager never blocks writing to a busy
worker that is itself writing a result); it runs the batch's tasks in order and sends results in
small batches. Its *slot* (16 bytes of shared memory) holds the id of the task it is running, so
when a worker dies the pool knows exactly which task was running (if any). A dead worker is
replaced; the caller decides what happens to the tasks it held. Workers also report each task's
start (`TaskEvents`), which `read` hands back beside the results.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from taskfabric.errors import ProtocolError
from taskfabric.manager.frames import FrameReader, write_frame
from taskfabric.manager.slot import CANCEL_MARK_OFFSET, SLOT_BYTES
from taskfabric.private_files import open_private
from taskfabric.protocol import (
    CancelTasks,
    FunctionBody,
    Result,
    ResultBatch,
    Task,
    TaskBatch,
    TaskEvents,
    TaskStarted,
    pack,
    unpack,
)
from taskfabric.secret_env import without_secrets

__all__ = ["REPORT_START_AFTER_S", "Worker", "WorkerPool"]

log = logging.getLogger(__name__)

#: the default (the endpoint's `started_report_delay_s`, the manager's `--started-report-delay`):
#: a task's start is reported once it has run this long (a shorter task is reported by its
#: result). Long enough that a short task whose result upload waits on a busy forwarder's disk
#: (several ms) still costs one message on every hop, not two; short enough that a person
#: watching sees `running` at once
REPORT_START_AFTER_S = 0.1

_EMPTY = bytes(16)


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process and what it is doing."""

    index: int
    process: subprocess.Popen[bytes]
    to_worker: int
    from_worker: int
    slot: mmap.mmap
    reader: FrameReader = dataclasses.field(default_factory=FrameReader)
    #: tasks sent and not yet answered, in the order the worker runs them
    assigned: collections.deque[Task] = dataclasses.field(default_factory=collections.deque)
    known_functions: set[uuid.UUID] = dataclasses.field(default_factory=set)
    #: the task last seen running in the slot, and since when (monotonic)
    seen_running: tuple[uuid.UUID, float] | None = None

    @property
    def idle(self) -> bool:
        return not self.assigned

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> uuid.UUID | None:
        """The id of the task the worker is running now, from its slot."""
        raw = self.slot[0:16]
        return None if raw == _EMPTY else uuid.UUID(bytes=raw)

    def running_since(self, now: float) -> tuple[uuid.UUID, float] | None:
        """The running task and (about) when it started, updating what was seen before."""
        current = self.running()
        if current is None:
            self.seen_running = None
        elif self.seen_running is None or self.seen_running[0] != current:
            self.seen_running = (current, now)
        return self.seen_running


class WorkerPool:
    """Starts, feeds, reads, replaces and stops `count` worker processes."""

    def __init__(
        self,
        count: int,
        *,
        max_result_bytes: int,
        task_workdir: Path,
        max_output_bytes: int = 65536,
        keep_task_workdirs: bool = False,
        log_dir: Path | None = None,
        report_start_after_s: float = REPORT_START_AFTER_S,
    ) -> None:
        if count < 1:
            raise ValueError("a pool needs at least one worker")
        self.count = count
        self.max_result_bytes = max_result_bytes
        self.task_workdir = task_workdir
        self.max_output_bytes = max_output_bytes
        self.keep_task_workdirs = keep_task_workdirs
        self.log_dir = log_dir
        self.report_start_after_s = report_start_after_s
        self.workers: list[Worker] = []
        self._by_fd: dict[int, Worker] = {}
        self.restarts = 0
        shm = Path("/dev/shm")
        self._slot_dir = Path(tempfile.mkdtemp(prefix="taskfabric-slots-", dir=shm if shm.is_dir() else None))

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.count):
            self._add(self._spawn(index))

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Close every worker's pipes (they exit at end of input); kill those that do not."""
        for worker in self.workers:
            _close_quietly(worker.to_worker)
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            _close_quietly(worker.from_worker)
            worker.slot.close()
        self.workers.clear()
        self._by_fd.clear()
        for slot in self._slot_dir.iterdir():
            slot.unlink(missing_ok=True)
        self._slot_dir.rmdir()

    def by_fd(self, fd: int) -> Worker | None:
        return self._by_fd.get(fd)

    @property
    def result_fds(self) -> list[int]:
        return list(self._by_fd)

    # --- work ---------------------------------------------------------------------------

    def idle_workers(self) -> list[Worker]:
        return [worker for worker in self.workers if worker.idle]

    def send(
        self, worker: Worker, tasks: list[Task], bodies: dict[uuid.UUID, FunctionBody], client_python: str
    ) -> None:
        """Hand an idle worker a batch (with the function bodies it has not seen yet)."""
        missing = {task.function_id for task in tasks} - worker.known_functions
        functions = [bodies[fid] for fid in missing if fid in bodies]
        frame = pack(TaskBatch(tasks=tasks, functions=functions, client_python=client_python))
        worker.assigned.extend(tasks)
        worker.known_functions.update(missing)
        try:
            write_frame(worker.to_worker, frame)
        except OSError:
            log.warning("worker %d (pid %d) is gone; its tasks come back with the next read", worker.index, worker.pid)

    def read(self, worker: Worker) -> tuple[list[Result], list[TaskStarted], bool]:
        """Results and task starts the worker has written since the last read, and whether it has died."""
        try:
            chunk = os.read(worker.from_worker, 1 << 20)
        except BlockingIOError:
            return [], [], False
        except OSError:
            chunk = b""
        if not chunk:
            return [], [], True
        results: list[Result] = []
        started: list[TaskStarted] = []
        try:
            for frame in worker.reader.feed(chunk):
                message = unpack(frame)
                if isinstance(message, ResultBatch):
                    results.extend(message.results)
                elif isinstance(message, TaskEvents):
                    started.extend(message.started)
                else:
                    raise ValueError(f"unexpected {type(message).__name__}")
        except (ProtocolError, ValueError) as exc:
            log.error("worker %d sent a bad frame (%s); replacing it", worker.index, exc)
            return self._settle(worker, results), started, True
        return self._settle(worker, results), started, False

    def _settle(self, worker: Worker, results: list[Result]) -> list[Result]:
        """Drop answered tasks from the worker's assignment. Results arrive in the order the tasks
        were sent, so each is usually the head of the assignment (compared by the ids' ints:
        hashing UUID objects runs Python code); anything else is filtered out by id."""
        assigned = worker.assigned
        for index, result in enumerate(results):
            if assigned and assigned[0].task_id.int == result.task_id.int:
                assigned.popleft()
                continue
            rest = {later.task_id.int for later in results[index:]}
            worker.assigned = collections.deque(task for task in assigned if task.task_id.int not in rest)
            break
        return results

    def replace(self, worker: Worker) -> tuple[Task | None, list[Task]]:
        """Reap a dead (or killed) worker and start a fresh one in its place. Returns the task it
        was running when it died (None if it died between tasks) and the other tasks it held."""
        self._by_fd.pop(worker.from_worker, None)
        _close_quietly(worker.to_worker)
        _close_quietly(worker.from_worker)
        if worker.process.poll() is None:
            worker.process.kill()
        code = worker.process.wait()
        log.warning("worker %d (pid %d) died with exit code %s; starting a new one", worker.index, worker.pid, code)
        running_id = worker.running()
        worker.slot.close()
        running = next((task for task in worker.assigned if task.task_id == running_id), None)
        others = [task for task in worker.assigned if task is not running]
        fresh = self._spawn(worker.index)
        self.workers[self.workers.index(worker)] = fresh
        self._by_fd[fresh.from_worker] = fresh
        self.restarts += 1
        return running, others

    def cancel(self, worker: Worker, task_ids: list[uuid.UUID]) -> None:
        """Tell a worker these of its tasks are cancelled: it skips them if not started, and
        ends itself on SIGTERM if it is running one (see worker.py). The frame is small and the
        worker is reading or has read its batch, so this write does not block for long."""
        try:
            write_frame(worker.to_worker, pack(CancelTasks(task_ids=task_ids)))
            # after the frame: a worker that sees the mark move finds the frame in its pipe
            worker.slot[CANCEL_MARK_OFFSET] = (worker.slot[CANCEL_MARK_OFFSET] + 1) & 0xFF
        except OSError:
            log.warning("worker %d (pid %d) is gone; its tasks come back with the next read", worker.index, worker.pid)

    def terminate(self, worker: Worker) -> None:
        """SIGTERM a worker (its running task was cancelled); the next read sees it dead."""
        try:
            os.kill(worker.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self, worker: Worker) -> None:
        """SIGKILL a worker (walltime far exceeded, or a cancelled task ignored SIGTERM); the next
        read sees it dead."""
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # --- internals ----------------------------------------------------------------------

    def _add(self, worker: Worker) -> None:
        self.workers.append(worker)
        self._by_fd[worker.from_worker] = worker

    def _spawn(self, index: int) -> Worker:
        slot_path = self._slot_dir / f"worker-{index}"
        slot_path.write_bytes(bytes(SLOT_BYTES))
        with open(slot_path, "r+b") as slot_file:
            slot = mmap.mmap(slot_file.fileno(), SLOT_BYTES)
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        command = [
            sys.executable,
            "-m",
            "taskfabric.manager.worker",
            "--fd-in",
            str(task_read),
            "--fd-out",
            str(result_write),
            "--slot",
            str(slot_path),
            "--max-result-bytes",
            str(self.max_result_bytes),
            "--worker-id",
            str(index),
            "--max-output-bytes",
            str(self.max_output_bytes),
            "--report-start-after",
            f"{self.report_start_after_s:g}",
            "--task-workdir",
            str(self.task_workdir),
            *(["--keep-task-workdirs"] if self.keep_task_workdirs else []),
        ]
        output = subprocess.DEVNULL if self.log_dir is None else _private_log(self.log_dir / f"worker-{index}.log")
        try:
            process = subprocess.Popen(
                command,
                pass_fds=(task_read, result_write),
                stdin=subprocess.DEVNULL,
                # the manager scrubbed its own environment at start (cli.py); this keeps a pool
                # run any other way from handing taskfabric's credential variables to tasks
                env=without_secrets(os.environ),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # type: ignore[union-attr]
            os.close(task_read)
            os.close(result_write)
        os.set_blocking(result_read, False)
        return Worker(index=index, process=process, to_worker=task_write, from_worker=result_read, slot=slot)


def _private_log(path: Path) -> IO[bytes]:
    """A worker's log file for appending, 0600 (it holds the output of users' tasks)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab")


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
