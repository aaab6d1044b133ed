"""The manager: one per compute node. A DEALER to the interchange, a pool of worker processes.

Its loop is a fixed sequence of steps over explicit state (see `Manager.run`):

    poll -> process_interchange_messages -> process_worker_output -> dispatch_to_workers
         -> enforce_walltimes -> enforce_cancellations -> flush_results -> send_heartbeat
         -> check_interchange

State: `queue` (tasks received, not yet on a worker), the pool's per-worker assignments, `results`
not yet sent, `started` (task starts, sent as one `TaskEvents` before the results of the same
step, minus the tasks whose results go with them) not yet sent, and the function bodies seen. A
worker that dies is replaced and the task it was running comes back as a `WORKER_LOST` result (the
interchange decides whether to retry it); the other tasks it held go back to the queue untouched. A
`CancelTasks` from the interchange drops queued tasks and stops the workers running cancelled ones
(see cancel.py); such a worker's death is the cancellation, answered `TASK_CANCELLED`, not a crash.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import platform
import shutil
import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType

from taskfabric import __version__
from taskfabric.errors import ErrorCode, ProtocolError
from taskfabric.manager.cancel import DEFAULT_CANCEL_GRACE_PERIOD_S, CancelBook
from taskfabric.manager.pool import REPORT_START_AFTER_S, Worker, WorkerPool
from taskfabric.manager.zmq_link import InterchangeLink
from taskfabric.protocol import (
    CancelTasks,
    Drain,
    FunctionBody,
    Heartbeat,
    ManagerAccepted,
    ManagerRegister,
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
from taskfabric.wake_pipe import WakePipe

__all__ = ["EXIT_DRAINED", "EXIT_INTERCHANGE_LOST", "EXIT_REFUSED", "Manager", "ManagerSettings"]

log = logging.getLogger(__name__)

EXIT_DRAINED = 0
EXIT_INTERCHANGE_LOST = 3
EXIT_REFUSED = 4

_CANCELLED_QUEUED = "the task was cancelled before it started"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManagerSettings:
    """How to run one manager (from `taskfabric manager run` flags)."""

    interchange_address: str
    workers: int
    prefetch: int = 0
    block_id: str | None = None
    registration_token: str = ""
    #: the interchange's CurveZMQ public key (Z85); None means a plain, unencrypted link
    interchange_key: bytes | None = None
    #: used until the interchange's ManagerAccepted says otherwise
    heartbeat_period_s: float = 10.0
    heartbeat_threshold_s: float = 60.0
    max_result_bytes: int = 10 * 1024 * 1024
    #: a task is killed this long after its walltime if it ignored the soft timeout
    walltime_grace_s: float = 5.0
    #: at most this many queued tasks go to an idle worker in one batch
    worker_batch_max: int = 16
    log_dir: Path | None = None
    #: tasks run in <task_workdir>/worker-<host>-<pid>; None: <log_dir>/tasks, or a temporary folder
    task_workdir: Path | None = None
    keep_task_workdirs: bool = False
    #: kept of each task's stdout and of its stderr (the end of it)
    max_output_bytes: int = 65536
    #: a task's start is reported once it has run this long; a shorter task reports only its result
    started_report_delay_s: float = REPORT_START_AFTER_S


@dataclasses.dataclass(slots=True)
class _Queued:
    task: Task
    client_python: str


class Manager:
    """Runs tasks from the interchange on a pool of workers until drained or orphaned."""

    def __init__(self, settings: ManagerSettings) -> None:
        self.settings = settings
        self.manager_id = uuid.uuid4().hex
        self.link = InterchangeLink(
            settings.interchange_address, self.manager_id.encode(), server_key=settings.interchange_key
        )
        self._own_workdir: Path | None = None
        self.pool = WorkerPool(
            settings.workers,
            max_result_bytes=settings.max_result_bytes,
            task_workdir=self._task_workdir(settings),
            max_output_bytes=settings.max_output_bytes,
            keep_task_workdirs=settings.keep_task_workdirs,
            log_dir=settings.log_dir,
            report_start_after_s=settings.started_report_delay_s,
        )
        self.queue: collections.deque[_Queued] = collections.deque()
        self.functions: dict[uuid.UUID, FunctionBody] = {}
        self.results: list[Result] = []
        self.started: list[TaskStarted] = []
        self.heartbeat_period_s = settings.heartbeat_period_s
        self.heartbeat_threshold_s = settings.heartbeat_threshold_s
        self.accepted = False
        self.draining = False
        self.stopping = False
        self.exit_code: int | None = None
        self._wake_pipe: WakePipe | None = None
        self._last_heard = time.monotonic()
        self._last_heartbeat_sent = 0.0
        self._walltime_kills: dict[int, uuid.UUID] = {}
        self.cancels = CancelBook()

    def _task_workdir(self, settings: ManagerSettings) -> Path:
        if settings.task_workdir is not None:
            return settings.task_workdir
        if settings.log_dir is not None:
            return settings.log_dir / "tasks"
        self._own_workdir = Path(tempfile.mkdtemp(prefix="taskfabric-tasks-"))
        return self._own_workdir

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Run until drained, told to stop, or cut off from the interchange; returns the exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # a signal wakes the poll at once (its handler alone would run only after the poll times out)
        self._wake_pipe = WakePipe()
        signal.set_wakeup_fd(self._wake_pipe.write_fd)
        self.link.watch(self._wake_pipe.read_fd)
        self.pool.start()
        for fd in self.pool.result_fds:
            self.link.watch(fd)
        self.register()
        try:
            while self.exit_code is None:
                self.step()
        finally:
            self.shutdown()
        return self.exit_code

    def step(self) -> None:
        """One pass of the loop."""
        socket_ready, fds = self.link.poll(self._poll_timeout_s())
        if socket_ready:
            self.process_interchange_messages()
        for fd in fds:
            if self._wake_pipe is not None and fd == self._wake_pipe.read_fd:
                self._wake_pipe.drain()
            else:
                self.process_worker_output(fd)
        self.dispatch_to_workers()
        self.enforce_walltimes()
        self.enforce_cancellations()
        self.flush_results()
        self.send_heartbeat()
        self.check_interchange()
        self.check_finished()

    def register(self) -> None:
        message = ManagerRegister(
            manager_id=self.manager_id,
            hostname=socket.gethostname(),
            workers=self.settings.workers,
            prefetch=self.settings.prefetch,
            python_version=platform.python_version(),
            taskfabric_version=__version__,
            block_id=self.settings.block_id,
            pid=os.getpid(),
            registration_token=self.settings.registration_token,
        )
        self.link.send(pack(message))
        log.info(
            "manager %s registering with %s (%d workers)",
            self.manager_id,
            self.settings.interchange_address,
            self.settings.workers,
        )

    def shutdown(self) -> None:
        if self.exit_code == EXIT_DRAINED:
            try:  # tell the interchange at once, so it need not wait for missed heartbeats
                self.flush_results()
                reason = "manager stopping (signal)" if self.stopping else "drained"
                self.link.send(pack(Drain(reason=reason)))
            except Exception:
                log.exception("could not say goodbye to the interchange")
        # told to stop (e.g. the scheduler cancelled the block): running tasks are abandoned and
        # the interchange has already put them back, so do not wait for them
        self.pool.stop(timeout_s=0.5 if self.stopping else 5.0)
        self.link.close()
        if self._own_workdir is not None and not self.settings.keep_task_workdirs:
            shutil.rmtree(self._own_workdir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("manager got signal %d; stopping", signum)
        self.stopping = True
        self.exit_code = EXIT_DRAINED

    # --- loop steps ---------------------------------------------------------------------

    def process_interchange_messages(self) -> None:
        for frame in self.link.receive_all():
            self._last_heard = time.monotonic()
            try:
                message = unpack(frame)
            except ProtocolError as exc:
                log.error("bad message from the interchange: %s", exc)
                continue
            if isinstance(message, TaskBatch):
                self._accept_tasks(message)
            elif isinstance(message, ManagerAccepted):
                self.accepted = True
                self.heartbeat_period_s = message.heartbeat_period_s
                self.heartbeat_threshold_s = message.heartbeat_threshold_s
                log.info("registered; heartbeat every %.1f s", self.heartbeat_period_s)
            elif isinstance(message, Drain):
                self._drain(message)
            elif isinstance(message, CancelTasks):
                self.cancel_tasks(message)
            elif not isinstance(message, Heartbeat):
                log.warning("ignoring a %s from the interchange", type(message).__name__)

    def _accept_tasks(self, batch: TaskBatch) -> None:
        for body in batch.functions:
            self.functions[body.function_id] = body
        for task in batch.tasks:
            self.queue.append(_Queued(task, batch.client_python))

    def _drain(self, message: Drain) -> None:
        if not self.accepted:
            log.error("the interchange refused this manager: %s", message.reason)
            self.exit_code = EXIT_REFUSED
            return
        log.info("draining: %s", message.reason or "asked by the interchange")
        self.draining = True

    def cancel_tasks(self, message: CancelTasks) -> None:
        """Drop the named tasks queued here; tell the workers holding the others, and stop (SIGTERM,
        SIGKILL after the grace period) those running one. Each is answered once (see cancel.py)."""
        task_ids = set(message.task_ids)
        grace_period_s = message.grace_period_s
        if grace_period_s is None:
            grace_period_s = DEFAULT_CANCEL_GRACE_PERIOD_S
        queued = [entry for entry in self.queue if entry.task.task_id in task_ids]
        if queued:
            self.queue = collections.deque(entry for entry in self.queue if entry.task.task_id not in task_ids)
            self.results.extend(_cancelled_result(entry.task, _CANCELLED_QUEUED) for entry in queued)
        now = time.monotonic()
        for worker in self.pool.workers:
            held = [task.task_id for task in worker.assigned if task.task_id in task_ids]
            if not held:
                continue
            self.cancels.mark(held)
            self.pool.cancel(worker, held)  # first, so a task starting now sees it (see worker.py)
            running = worker.running()
            if running in held:
                log.info("cancelling task %s: stopping worker %d (pid %d)", running, worker.index, worker.pid)
                self.cancels.schedule_kill(worker.index, running, now=now, grace_period_s=grace_period_s)
                self.pool.terminate(worker)

    def enforce_cancellations(self) -> None:
        """SIGKILL the workers still running a cancelled task after its grace period."""
        for kill in self.cancels.due_kills(time.monotonic()):
            worker = self.pool.workers[kill.worker_index]
            if worker.running() == kill.task_id:
                log.warning("task %s ignored SIGTERM; killing worker %d", kill.task_id, worker.index)
                self.pool.kill(worker)

    def process_worker_output(self, fd: int) -> None:
        worker = self.pool.by_fd(fd)
        if worker is None:
            return
        results, started, died = self.pool.read(worker)
        self.cancels.answered(result.task_id for result in results)
        self.results.extend(results)
        self.started.extend(started)
        if died:
            self._replace_dead_worker(worker)

    def _replace_dead_worker(self, worker: Worker) -> None:
        walltime_task = self._walltime_kills.pop(worker.index, None)
        self.link.unwatch(worker.from_worker)
        running, waiting = self.pool.replace(worker)
        # after `replace`, which reaps the process: its pipe closes before it is reaped, so polling
        # any earlier could find no exit status yet ("exited with code None")
        code = worker.process.returncode
        self.link.watch(self.pool.workers[worker.index].from_worker)
        cancelled_run = self.cancels.worker_died(worker.index, running.task_id if running else None)
        for task in reversed(waiting):  # not its fault: back to the queue, untouched (unless cancelled)
            if self.cancels.is_cancelled(task.task_id):
                self.results.append(_cancelled_result(task, _CANCELLED_QUEUED))
            else:
                self.queue.appendleft(_Queued(task, ""))
        if running is None:
            return
        if cancelled_run:
            message = f"the task was cancelled while running; its worker (pid {worker.pid}) was stopped"
            self.results.append(_cancelled_result(running, message))
        elif walltime_task == running.task_id:
            message = (
                f"the task ran past its walltime of {running.walltime_s:g} s and did not stop; "
                f"its worker was killed after a {self.settings.walltime_grace_s:g} s grace period"
            )
            self.results.append(_error_result(running, ErrorCode.WALLTIME_EXCEEDED, message))
        else:
            how = _how_it_ended(code)
            message = f"the worker process (pid {worker.pid}) running this task {how}"
            self.results.append(_error_result(running, ErrorCode.WORKER_LOST, message))

    def dispatch_to_workers(self) -> None:
        idle = self.pool.idle_workers()
        if not idle or not self.queue:
            return
        per_worker = max(1, min(self.settings.worker_batch_max, math.ceil(len(self.queue) / len(idle))))
        for worker in idle:
            if not self.queue:
                return
            batch = [self.queue.popleft() for _ in range(min(per_worker, len(self.queue)))]
            client_python = batch[0].client_python
            self.pool.send(worker, [entry.task for entry in batch], self.functions, client_python)

    def enforce_walltimes(self) -> None:
        """Kill a worker whose task ignored its walltime (the soft SIGALRM did not stop it)."""
        now = time.monotonic()
        for worker in self.pool.workers:
            if worker.idle or worker.index in self._walltime_kills:
                continue
            seen = worker.running_since(now)
            if seen is None:
                continue
            task_id, since = seen
            task = next((task for task in worker.assigned if task.task_id == task_id), None)
            if task is not None and task.walltime_s and now - since > task.walltime_s + self.settings.walltime_grace_s:
                log.warning("task %s ignored its walltime; killing worker %d", task_id, worker.index)
                self._walltime_kills[worker.index] = task_id
                self.pool.kill(worker)

    def flush_results(self) -> None:
        if self.started:
            started, self.started = self.started, []
            if self.results:  # a start whose result goes out now tells nothing more
                finished = {result.task_id for result in self.results}
                started = [event for event in started if event.task_id not in finished]
            if started:
                self.link.send(pack(TaskEvents(started=started)))
        if self.results:
            batch, self.results = self.results, []
            self.cancels.answered(result.task_id for result in batch)
            self.link.send(pack(ResultBatch(results=batch)))

    def send_heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat_sent >= self.heartbeat_period_s:
            self.link.send(pack(Heartbeat(sent_at=time.time())))
            self._last_heartbeat_sent = now

    def check_interchange(self) -> None:
        silent_s = time.monotonic() - self._last_heard
        if silent_s > self.heartbeat_threshold_s:
            log.error("no word from the interchange for %.0f s; exiting", silent_s)
            self.exit_code = EXIT_INTERCHANGE_LOST

    def check_finished(self) -> None:
        if self.draining and not self.queue and all(worker.idle for worker in self.pool.workers) and not self.results:
            self.exit_code = EXIT_DRAINED

    def _poll_timeout_s(self) -> float:
        timeout = self.heartbeat_period_s
        if any(not worker.idle for worker in self.pool.workers):
            timeout = min(timeout, 1.0)  # walltime checks
        next_kill_s = self.cancels.next_kill_in_s(time.monotonic())
        if next_kill_s is not None:
            timeout = min(timeout, next_kill_s)
        return timeout


def _cancelled_result(task: Task, message: str) -> Result:
    return _error_result(task, ErrorCode.TASK_CANCELLED, message)


def _error_result(task: Task, code: ErrorCode, message: str) -> Result:
    now = time.time()
    return Result(
        task_id=task.task_id,
        ok=False,
        error=TaskError(code=code, message=message),
        worker_python=platform.python_version(),
        received_at=now,
        started_at=now,
        finished_at=now,
    )


def _how_it_ended(code: int | None) -> str:
    """A dead worker's exit, as words: the signal that killed it, or its exit code."""
    if code is None:  # not reaped (cannot happen after `WorkerPool.replace`): say so plainly
        return "died (its exit status is unknown)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"was killed by signal {-code}"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"
