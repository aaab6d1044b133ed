"""The endpoint agent: from the endpoint's task queue to its result queue, without losing work.

One loop thread owns all state; the broker's IO thread and the block launcher only hand it work
through queues and wake it. Each pass of the loop is a fixed sequence of named steps:

    poll -> take_task_batches -> process_manager_messages -> handle_lost_tasks -> apply_block_changes
         -> dispatch_tasks -> publish_results -> publish_started -> settle_publishes -> republish_stored_results
         -> send_heartbeats -> report_status -> observe_for_scaling -> regulate_intake -> flush_ledger
         -> advance_shutdown

State, in named places: the on-disk `Ledger` (every task taken and not yet answered, and results
not yet confirmed), `waiting` (tasks in hand, not on a manager), the `Interchange` (tasks on each
manager), `outbox` (results to publish), `in_flight` (results published, not yet confirmed) and
`started` (task starts to report: coalesced, at most one message every `_STARTED_PERIOD_S`, and
dropped when the task's result arrives first; the result says all a start would).

The ack point (see ledger.py): a task message is acked once each of its new tasks is safe, written
to the ledger (group-committed every 10 ms) or already answered; a task leaves the ledger once its
result is confirmed by the broker.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import platform
import queue
import signal
import socket
import time
import uuid
from pathlib import Path
from types import FrameType

from taskfabric import __version__
from taskfabric.endpoint_agent.broker_link import BrokerLink
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.dispatch import retry_decision
from taskfabric.endpoint_agent.interchange import Interchange, LostTask
from taskfabric.endpoint_agent.launch import ManagerLaunch, new_registration_token, write_private_file
from taskfabric.endpoint_agent.ledger import HeldTask, Ledger
from taskfabric.endpoint_agent.scaler import Scaler
from taskfabric.endpoint_agent.zmq_router import ManagerSockets, curve_keypair
from taskfabric.errors import AccessRefused, BrokerError, ErrorCode
from taskfabric.protocol import EndpointStatus, FunctionBody, Result, TaskError, TaskStarted
from taskfabric.transport import Delivery

__all__ = ["Agent", "AgentPaths"]

log = logging.getLogger(__name__)

_REPUBLISH_PERIOD_S = 1.0
#: result messages published and not yet confirmed: under load, results gather while confirms are
#: pending and leave together (bigger messages, less overhead at every hop); when idle, a result
#: leaves at once
_RESULT_PUBLISHES_IN_FLIGHT = 2
#: staged tasks are written to the ledger (and their messages acked) at least this often
_LEDGER_FLUSH_S = 0.01
#: ... or as soon as this many changes are staged
_LEDGER_FLUSH_COUNT = 4096
#: task starts are published at most this often (one message for all gathered meanwhile)
_STARTED_PERIOD_S = 0.005


@dataclasses.dataclass(eq=False)
class _Unacked:
    """A task message whose new tasks are not all safe yet (written, or answered)."""

    delivery: Delivery
    unsafe: set[uuid.UUID]


_SUBSCRIBE_RETRY_S = 2.0


@dataclasses.dataclass(frozen=True)
class AgentPaths:
    """Where an endpoint keeps its files (all under one folder)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def connection(self) -> Path:
        return self.root / "connection.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def blocks(self) -> Path:
        return self.root / "blocks"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def pid(self) -> Path:
        return self.root / "agent.pid"


class _Functions:
    """Function bodies the agent knows: from task batches, else from the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._bodies: dict[uuid.UUID, FunctionBody] = {}

    def add(self, bodies: list[FunctionBody]) -> None:
        for body in bodies:
            self._bodies[body.function_id] = body

    def get(self, function_ids: set[uuid.UUID]) -> list[FunctionBody]:
        missing = [fid for fid in function_ids if fid not in self._bodies]
        if missing:
            self.add(self._ledger.functions(missing))
        return [self._bodies[fid] for fid in function_ids if fid in self._bodies]


class Agent:
    """Runs one endpoint until stopped (SIGTERM/SIGINT or `stop()`)."""

    def __init__(self, config: EndpointConfig, connection: EndpointConnection, paths: AgentPaths) -> None:
        self.config = config
        self.connection = connection
        self.paths = paths
        self.ledger = Ledger(paths.ledger)
        self.functions = _Functions(self.ledger)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        public_key, secret_key = curve_keypair() if config.interchange_encrypted else (None, None)
        self.sockets = ManagerSockets(config.interchange_address, config.interchange_port, curve_secret_key=secret_key)
        self._interchange_key = public_key
        self.token = new_registration_token()
        self.interchange = Interchange(
            self.sockets,
            heartbeat_period_s=config.heartbeat_period_s,
            heartbeat_threshold_s=config.heartbeat_threshold_s,
            registration_token=self.token,
            function_source=self.functions.get,
        )
        self.sockets.watch(self._wake_read)
        self.broker = BrokerLink(connection, wake=self.wake)
        block_config = config.block_config(source=str(paths.config))
        self.scaler = Scaler(
            block_config,
            self._launch(block_config.provider.block.max_blocks * block_config.provider.block.nodes_per_block),
            paths.blocks,
            wake=self.wake,
            backlog=self.broker.backlog,
            drain_grace_s=config.heartbeat_threshold_s + config.drain_timeout_s,
        )
        self.waiting: collections.deque[HeldTask] = collections.deque()
        self.outbox: list[Result] = []
        self.started: dict[uuid.UUID, TaskStarted] = {}
        self._last_started_publish = 0.0
        self.in_flight: dict[int, list[Result]] = {}
        self._in_flight_ids: set[uuid.UUID] = set()
        self._has_stored_results = False
        self._unacked: dict[uuid.UUID, _Unacked] = {}  # task -> the message it came in
        self._last_flush = 0.0
        self._status_period_s = connection.status_period_s or config.status_period_s
        self._last_status = 0.0
        self._last_republish = 0.0
        self._last_subscribe_try = 0.0
        self._last_observed = 0.0
        self.stopping = False
        self._stop_deadline = 0.0
        self._drained = False
        self.finished = False

    def _launch(self, max_managers: int) -> ManagerLaunch:
        return ManagerLaunch(
            interchange_address=self.sockets.address,
            workers=self.config.workers_per_node,
            prefetch=self.config.effective_prefetch(max_managers),
            heartbeat_period_s=self.config.heartbeat_period_s,
            heartbeat_threshold_s=self.config.heartbeat_threshold_s,
            max_result_bytes=self.config.max_result_bytes,
            token_file=write_private_file(self.paths.blocks / "manager.token", self.token),
            log_root=self.paths.blocks,
            base_command=self.config.manager_command,
            interchange_key_file=(
                write_private_file(self.paths.blocks / "interchange.key", self._interchange_key)
                if self._interchange_key
                else None
            ),
            max_output_bytes=self.config.max_output_bytes,
            task_workdir=Path(self.config.task_workdir).expanduser() if self.config.task_workdir else None,
            keep_task_workdirs=self.config.keep_task_workdirs,
        )

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Start, loop until stopped, shut down; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.set_wakeup_fd(self._wake_write)
        self.start()
        try:
            while not self.finished:
                self.step()
        finally:
            self.close()
        return 0

    def start(self) -> None:
        log.info(
            "agent for endpoint %s starting: interchange at %s, taskfabric %s",
            self.connection.endpoint_id,
            self.sockets.address,
            __version__,
        )
        self.recover()
        try:
            self.broker.start()
        except AccessRefused:
            raise
        except BrokerError as exc:
            log.warning("broker not reachable yet (%s); retrying in the background", exc)
        self.ensure_subscribed(time.monotonic())
        self.scaler.start()

    def recover(self) -> None:
        """Put tasks left in the ledger by an earlier run back to work."""
        to_run, to_publish = self.ledger.unfinished()
        if to_run or to_publish:
            log.info(
                "recovered %d tasks to run and %d results to re-publish from the ledger", len(to_run), len(to_publish)
            )
        self.waiting.extend(to_run)
        self._has_stored_results = bool(to_publish)

    def stop(self) -> None:
        """Begin a graceful stop: take no new tasks, let running ones finish (up to drain_timeout_s)."""
        if not self.stopping:
            log.info(
                "stopping: taking no new tasks; %d running tasks may finish", self.interchange.summary().outstanding
            )
            self.stopping = True
            self._stop_deadline = time.monotonic() + self.config.drain_timeout_s
            self.broker.pause()
            self.wake()

    def close(self) -> None:
        self.scaler.stop()
        self.sockets.close()
        self.broker.close()
        self.ledger.flush()  # staged tasks survive a stop (their messages, unacked, come back too)
        self.ledger.close()
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass

    def wake(self) -> None:
        """Make the loop run a pass now (callable from any thread)."""
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (pipe full) or closing

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    # --- the loop -----------------------------------------------------------------------

    def step(self) -> None:
        """One pass of the loop."""
        _ready, fds = self.sockets.poll(self._poll_timeout_s())
        if self._wake_read in fds:
            _drain(self._wake_read)
        now = time.monotonic()
        self.ensure_subscribed(now)
        self.take_task_batches()
        self.process_manager_messages(now)
        self.handle_lost_tasks(self.interchange.expire_lost_managers(now))
        self.apply_block_changes()
        if not self.stopping:
            self.interchange.dispatch(self.waiting)
        self.publish_results()
        self.publish_started(now)
        self.settle_publishes()
        self.republish_stored_results(now)
        self.interchange.send_heartbeats(now)
        self.report_status(now)
        self.observe_for_scaling(now)
        self.regulate_intake()
        self.flush_ledger(now, force=self.stopping)
        self.advance_shutdown(now)

    def _poll_timeout_s(self) -> float:
        if self.stopping:
            return 0.1
        if self.ledger.staged:
            return _LEDGER_FLUSH_S
        if self.started:
            return _STARTED_PERIOD_S
        return min(self.interchange.heartbeat_period_s, self._status_period_s, 1.0)

    def ensure_subscribed(self, now: float) -> None:
        if self.broker.subscribed() or self.stopping or now - self._last_subscribe_try < _SUBSCRIBE_RETRY_S:
            return
        self._last_subscribe_try = now
        try:
            self.broker.subscribe()
            log.info("consuming tasks from %s", self.connection.task_queue)
        except BrokerError as exc:
            log.warning("cannot consume the task queue yet: %s", exc)

    def take_task_batches(self) -> None:
        """Stage arrived tasks in the ledger and queue them at once; a message is acked when all
        its new tasks are safe (see `flush_ledger` and ledger.py)."""
        default_walltime = self.config.default_walltime_s
        while True:
            try:
                batch, delivery = self.broker.inbound.get_nowait()
            except queue.Empty:
                return
            self.functions.add(batch.functions)
            fresh = self.ledger.stage([batch])
            if not fresh:
                self.broker.ack(delivery)  # nothing new in it: a redelivery
                continue
            pending = _Unacked(delivery, {held.task_id for held in fresh})
            for held in fresh:
                self._unacked[held.task_id] = pending
                if default_walltime and held.task.walltime_s is None:
                    held.task = dataclasses.replace(held.task, walltime_s=default_walltime)
            self.waiting.extend(fresh)

    def flush_ledger(self, now: float, *, force: bool = False) -> None:
        """Write staged tasks (group commit) and ack the messages whose tasks are all safe now."""
        staged = self.ledger.staged
        if staged and (force or staged >= _LEDGER_FLUSH_COUNT or now - self._last_flush >= _LEDGER_FLUSH_S):
            self._last_flush = now
            self._now_safe(self.ledger.flush())

    def _now_safe(self, task_ids: list[uuid.UUID]) -> None:
        for task_id in task_ids:
            pending = self._unacked.pop(task_id, None)
            if pending is not None:
                pending.unsafe.discard(task_id)
                if not pending.unsafe:
                    self.broker.ack(pending.delivery)

    def process_manager_messages(self, now: float) -> None:
        out = self.interchange.process_messages(now)
        lost = list(out.lost)
        for held, event in out.started:
            attempt = held.attempts + 1  # the manager cannot know how many runs were lost before
            fixed = event if event.attempt == attempt else dataclasses.replace(event, attempt=attempt)
            self.started[held.task_id] = fixed
        for held, result in out.results:
            self.started.pop(held.task_id, None)
            error = result.error
            if error is not None and error.error_code is not None and error.error_code.is_system_failure:
                lost.append(LostTask(held, error.error_code, error.message))
            elif result.attempts == held.attempts + 1:
                self.outbox.append(result)  # the common case: first run, nothing to rewrite
            else:
                self.outbox.append(dataclasses.replace(result, attempts=held.attempts + 1))
        self.handle_lost_tasks(lost)

    def apply_block_changes(self) -> None:
        """Blocks the scheduler ended lose their managers (and tasks); blocks scaled in drain."""
        for block_id, reason in self.scaler.ended_blocks():
            self.handle_lost_tasks(self.interchange.lose_block(block_id, reason))
        for block_id in self.scaler.blocks_to_drain():
            self.interchange.drain("scaled in: idle", block_id=block_id)

    def observe_for_scaling(self, now: float) -> None:
        if now - self._last_observed >= 0.1:
            self._last_observed = now
            summary = self.interchange.summary()
            self.scaler.observe(
                waiting=len(self.waiting), outstanding=summary.outstanding, activity=self.interchange.block_activity()
            )

    def handle_lost_tasks(self, lost: list[LostTask]) -> None:
        """Retry tasks whose run the fabric lost, up to max_retries_on_system_failure; then fail
        them with the loss as their error and dead-letter them."""
        for item in lost:
            held = item.held
            self.started.pop(held.task_id, None)
            decision = retry_decision(held.attempts, self.config.max_retries_on_system_failure)
            held.attempts = decision.attempts
            self.ledger.set_attempts(held.task_id, held.attempts)
            if decision.retry:
                log.info("task %s lost (%s); retry %d", held.task_id, item.message, held.attempts)
                self.waiting.appendleft(held)
                continue
            message = (
                f"{item.message}; gave up after {held.attempts} lost runs "
                f"(max_retries_on_system_failure={self.config.max_retries_on_system_failure})"
            )
            self.outbox.append(_error_result(held, item.code, message))
            bodies = self.functions.get({held.task.function_id})
            self.broker.dead_letter(held.task, bodies[0] if bodies else None, message)

    def publish_results(self) -> None:
        if not self.outbox or len(self.in_flight) >= _RESULT_PUBLISHES_IN_FLIGHT:
            return
        results, self.outbox = self.outbox, []
        for ticket, chunk in self.broker.publish_results(results):
            self.in_flight[ticket] = chunk
            self._in_flight_ids.update(result.task_id for result in chunk)

    def publish_started(self, now: float) -> None:
        """Report the task starts gathered since the last report (one message, not one per task)."""
        if not self.started or now - self._last_started_publish < _STARTED_PERIOD_S:
            return
        self._last_started_publish = now
        started, self.started = list(self.started.values()), {}
        self.broker.publish_started(started)

    def settle_publishes(self) -> None:
        """Confirmed results leave the ledger (one transaction per pass); failed ones are stored in
        it for later."""
        confirmed: list[uuid.UUID] = []
        while True:
            try:
                outcome = self.broker.outcomes.get_nowait()
            except queue.Empty:
                break
            results = self.in_flight.pop(outcome.ticket, outcome.results)
            self._in_flight_ids.difference_update(result.task_id for result in results)
            if outcome.error is None:
                confirmed.extend(result.task_id for result in results)
            else:
                log.warning("%d results not confirmed (%s); kept on disk for re-sending", len(results), outcome.error)
                self._now_safe(self.ledger.store_results(results))
                self._has_stored_results = True
        if confirmed:
            self.ledger.complete(confirmed)
            self._now_safe(confirmed)

    def republish_stored_results(self, now: float) -> None:
        if (
            not self._has_stored_results
            or not self.broker.connected
            or now - self._last_republish < _REPUBLISH_PERIOD_S
        ):
            return
        self._last_republish = now
        stored = [result for result in self.ledger.stored_results() if result.task_id not in self._in_flight_ids]
        if not stored:
            self._has_stored_results = self.ledger.counts()["stored_results"] > len(self._in_flight_ids)
            return
        log.info("re-publishing %d stored results", len(stored))
        self.outbox.extend(stored)
        self.publish_results()

    def report_status(self, now: float) -> None:
        if now - self._last_status < self._status_period_s:
            return
        self._last_status = now
        summary = self.interchange.summary()
        blocks = self.scaler.status()
        status = EndpointStatus(
            endpoint_id=self.connection.endpoint_id,
            sent_at=time.time(),
            state="draining" if self.stopping else "online",
            heartbeat_period_s=self._status_period_s,
            managers=summary.managers,
            workers=summary.workers,
            idle_workers=summary.idle_workers,
            outstanding_tasks=summary.outstanding + len(self.waiting),
            pending_blocks=blocks.pending,
            running_blocks=blocks.running,
            hostname=socket.gethostname(),
            python_version=platform.python_version(),
            agent_version=__version__,
            scaling=blocks.last_decision,
        )
        self.broker.publish_status(status)

    def regulate_intake(self) -> None:
        """Stop taking tasks while `task_buffer` of them wait for a manager; start again at half."""
        if self.stopping:
            return
        if not self.broker.paused and len(self.waiting) >= self.config.task_buffer:
            log.debug("%d tasks waiting; pausing intake", len(self.waiting))
            self.broker.pause()
        elif self.broker.paused and len(self.waiting) <= self.config.task_buffer // 2:
            self.broker.resume()

    def advance_shutdown(self, now: float) -> None:
        if not self.stopping:
            return
        outstanding = self.interchange.summary().outstanding
        if not self._drained and (outstanding == 0 or now >= self._stop_deadline):
            if outstanding:
                log.warning(
                    "%d tasks still running at the drain deadline; they stay in the ledger and run again next start",
                    outstanding,
                )
            self.interchange.drain("the endpoint is stopping")
            self._drained = True
        if not self._drained:
            return
        flushed = not self.outbox and not self.in_flight
        if flushed or now >= self._stop_deadline + 10.0:
            unconfirmed = [result for chunk in self.in_flight.values() for result in chunk] + self.outbox
            if unconfirmed:
                self._now_safe(self.ledger.store_results(unconfirmed))
                log.warning("%d results unconfirmed at exit; stored for the next start", len(unconfirmed))
            self.finished = True

    # --- status for tests and the CLI ---------------------------------------------------

    @property
    def interchange_address(self) -> str:
        return self.sockets.address


def _error_result(held: HeldTask, code: ErrorCode, message: str) -> Result:
    now = time.time()
    return Result(
        task_id=held.task_id,
        ok=False,
        error=TaskError(code=code, message=message),
        received_at=now,
        started_at=now,
        finished_at=now,
        attempts=held.attempts,
    )


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
