"""The endpoint agent: from the endpoint's task queue to its result queue, without losing work.

One loop thread owns all state; the broker's IO thread and the block launcher only hand it work
through queues and wake it. Each pass of the loop is a fixed sequence of named steps:

    poll -> ensure_subscribed -> report_inventory -> process_cancellations -> take_task_batches
         -> process_manager_messages -> handle_lost_tasks -> apply_block_changes -> check_scaler
         -> dispatch_tasks
         -> publish_results -> publish_started -> settle_publishes -> republish_stored_results
         -> send_heartbeats -> report_status -> observe_for_scaling -> regulate_intake -> flush_ledger
         -> advance_shutdown

State, in named places: the on-disk `Ledger` (every task taken and not yet answered, and results
not yet confirmed), `waiting` (tasks in hand, not on a manager), the `Interchange` (tasks on each
manager), `outbox` (a `ResultOutbox`: results to publish, and results published, not yet
confirmed), `acks` (an `AckTracker`: task messages not acked yet, see the ack point below) and
`started` (task starts to report: coalesced, at most one message every `_STARTED_PERIOD_S`, and
dropped when the task's result arrives first; the result says all a start would).

Cancellation: a `CancelTasks` from the control queue is written to the ledger's cancelled table
before its message is acked; then the named tasks waiting here are answered `TASK_CANCELLED` at
once, and those on managers are cancelled there (the interchange forwards the message; the manager
answers). A task arriving later (or recovered from the ledger, or lost with its manager) that the
ledger knows as cancelled is answered the same way and never dispatched. Each answer is a result
like any other, so the ledger lets go of the task once the broker confirms it; the forwarder,
which already marked the task cancelled, ignores it.

The ack point (see ledger.py): a task message is acked once each of its new tasks is safe, written
to the ledger (group-committed every 10 ms) or already answered; a task leaves the ledger once its
result is confirmed by the broker.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import platform
import queue
import signal
import socket
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from types import FrameType

from taskfabric import __version__
from taskfabric.endpoint_agent.ack_tracker import AckTracker
from taskfabric.endpoint_agent.broker_link import EndpointBrokerLink
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.dispatch import retry_decision
from taskfabric.endpoint_agent.interchange import Interchange, LostTask
from taskfabric.endpoint_agent.launch import ManagerLaunch, new_registration_token, write_private_file
from taskfabric.endpoint_agent.ledger import HeldTask, Ledger
from taskfabric.endpoint_agent.outbox import ResultOutbox
from taskfabric.endpoint_agent.paths import AgentPaths
from taskfabric.endpoint_agent.scaler import BlockScaler, Scaler
from taskfabric.endpoint_agent.zmq_router import ManagerSockets, RouterSocket, curve_keypair
from taskfabric.errors import AccessRefused, BrokerError, ErrorCode, LedgerError
from taskfabric.exit_codes import RET_CRASHED, RET_OK
from taskfabric.protocol import (
    MAX_BLOCK_REPORTS,
    BlockReport,
    EndpointState,
    EndpointStatus,
    FunctionBody,
    Result,
    TaskBatch,
    TaskError,
    TaskEvents,
    TaskStarted,
)
from taskfabric.transport import Transport
from taskfabric.wake_pipe import WakePipe

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


_SUBSCRIBE_RETRY_S = 2.0
#: how often the ledger forgets cancellations past their expiry
_CANCEL_PURGE_PERIOD_S = 3600.0
#: on a graceful stop, how long to wait for the broker to confirm tasks handed back
_HAND_BACK_WAIT_S = 10.0
_HAND_BACK_PER_MESSAGE = 256
#: back-off between tries to write an unwritable ledger (doubling up to the max)
_LEDGER_RETRY_INITIAL_S = 0.5
_LEDGER_RETRY_MAX_S = 5.0


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

    def __init__(
        self,
        config: EndpointConfig,
        connection: EndpointConnection,
        paths: AgentPaths,
        *,
        transport: Transport | None = None,
        sockets: RouterSocket | None = None,
        scaler: BlockScaler | None = None,
    ) -> None:
        """`transport`, `sockets` and `scaler` default to the real ones (RabbitMQ with the
        endpoint's credentials, a ZeroMQ ROUTER, a `Scaler` over the configured provider); unit
        tests pass in-memory ones and drive `step()` (or its named steps) themselves."""
        self.config = config
        self.connection = connection
        self.paths = paths
        self.ledger = Ledger(paths.ledger)
        self.functions = _Functions(self.ledger)
        #: the functions this endpoint runs (None: any); see `_allowed`
        self.allowed_functions = allowed_functions_of(config, connection)
        self._wake_pipe = WakePipe()
        public_key, secret_key = curve_keypair() if config.interchange_encrypted else (None, None)
        self.sockets = sockets or ManagerSockets(
            config.interchange_address, config.interchange_port, curve_secret_key=secret_key
        )
        self._interchange_key = public_key
        self.token = new_registration_token()
        self.interchange = Interchange(
            self.sockets,
            heartbeat_period_s=config.heartbeat_period_s,
            heartbeat_threshold_s=config.heartbeat_threshold_s,
            registration_token=self.token,
            function_source=self.functions.get,
        )
        self.sockets.watch(self._wake_pipe.read_fd)
        self.broker = EndpointBrokerLink(
            connection,
            wake=self.wake,
            transport=transport,
            consumer_check_period_s=config.consumer_check_period_s,
            ssl_context=None if transport is not None else connection.broker_ssl_context(config.broker_ca_file),
        )
        self.scaler = scaler or self._scaler()
        self.waiting: collections.deque[HeldTask] = collections.deque()
        self.outbox = ResultOutbox(max_in_flight=_RESULT_PUBLISHES_IN_FLIGHT)
        self.started: dict[uuid.UUID, TaskStarted] = {}
        self._last_started_publish = 0.0
        self._has_stored_results = False
        self.acks = AckTracker()
        self._last_flush = 0.0
        self._status_period_s = _status_period_s(config, connection)
        self._last_status = 0.0
        self._last_republish = 0.0
        self._last_subscribe_try = 0.0
        self._inventory_due = True  # once subscribed (see report_inventory)
        self._inventory_sent: Future[None] | None = None
        self._last_inventory_try = -_SUBSCRIBE_RETRY_S
        self._last_observed = 0.0
        self._last_cancel_purge = time.monotonic()
        self._refused = False
        self._handed_back = False
        self.stopping = False
        #: a SIGTERM/SIGINT arrived: the loop begins the graceful stop at its next pass
        self._stop_requested = False
        #: what `run` returns: RET_CRASHED after a part of the agent failed for good
        self.exit_code = RET_OK
        self._stop_deadline = 0.0
        self._drained = False
        self.finished = False
        #: why the agent takes no tasks for now (its ledger refuses writes); None when healthy
        self.degraded_reason: str | None = None
        self._ledger_retry_at = 0.0
        self._ledger_retry_s = _LEDGER_RETRY_INITIAL_S
        #: when the agent last held a task (for `idle_shutdown_s`)
        self._last_busy = time.monotonic()

    def _scaler(self) -> Scaler:
        block_config = self.config.block_config(source=str(self.paths.config))
        return Scaler(
            block_config,
            self._launch(block_config.provider.block.max_blocks * block_config.provider.block.nodes_per_block),
            self.paths.blocks,
            wake=self.wake,
            backlog=self.broker.backlog,
            drain_grace_s=self.config.heartbeat_threshold_s + self.config.drain_timeout_s,
        )

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
            started_report_delay_s=self.config.started_report_delay_s,
            task_workdir=Path(self.config.task_workdir).expanduser() if self.config.task_workdir else None,
            keep_task_workdirs=self.config.keep_task_workdirs,
        )

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        """Start, loop until stopped, shut down; returns the process exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.set_wakeup_fd(self._wake_pipe.write_fd)
        self.start()
        try:
            while not self.finished:
                self.step()
        finally:
            self.close()
        return self.exit_code

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
        self.waiting.extend(self._allowed(self._not_cancelled(to_run)))
        self._has_stored_results = bool(to_publish)

    def stop(self) -> None:
        """Begin a graceful stop: take no new tasks, let running ones finish (up to drain_timeout_s);
        tasks no manager has yet go back to the broker (`hand_back_waiting`)."""
        if not self.stopping:
            summary = self.interchange.summary()
            running = summary.workers - summary.idle_workers
            queued = summary.outstanding - running
            log.info(
                "stopping: taking no new tasks; %d running tasks may finish%s",
                running,
                f" ({queued} more queued on managers start as workers free up)" if queued else "",
            )
            self.stopping = True
            self._stop_deadline = time.monotonic() + self.config.drain_timeout_s
            self.broker.pause()
            self.wake()

    def close(self) -> None:
        self.scaler.stop()
        self.sockets.close()
        if self.stopping:
            self.report_offline()
        self.broker.close()
        try:
            self.ledger.flush()  # staged tasks survive a stop (their messages, unacked, come back too)
        except LedgerError as exc:
            log.warning("staged tasks not written at exit (%s); their messages were not acked and come back", exc)
        self.ledger.close()
        self._wake_pipe.close()

    def wake(self) -> None:
        """Make the loop run a pass now (callable from any thread)."""
        self._wake_pipe.wake()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: the handler runs on the main thread between any two bytecodes, perhaps
        # while that thread holds a lock `stop()` takes (the broker link's), which would hang the
        # agent for good. The loop, woken by the signal's wakeup fd, stops at its next pass.
        self._stop_requested = True

    # --- the loop -----------------------------------------------------------------------

    def step(self) -> None:
        """One pass of the loop."""
        _ready, fds = self.sockets.poll(self._poll_timeout_s())
        if self._wake_pipe.read_fd in fds:
            self._wake_pipe.drain()
        if self._stop_requested:
            self.stop()
        now = time.monotonic()
        self.ensure_subscribed(now)
        self.report_inventory(now)
        self.process_cancellations(now)
        self.take_task_batches()
        self.process_manager_messages(now)
        self.handle_lost_tasks(self.interchange.expire_lost_managers(now))
        self.apply_block_changes()
        self.check_scaler()
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
        self.note_broker_refusal()
        self.flush_ledger(now, force=self.stopping)
        self.stop_when_idle(now)
        self.advance_shutdown(now)

    def _poll_timeout_s(self) -> float:
        if self.stopping or self.degraded_reason is not None:
            return 0.1
        if self.ledger.staged:
            return _LEDGER_FLUSH_S
        if self.started:
            return _STARTED_PERIOD_S
        return min(self.interchange.heartbeat_period_s, self._status_period_s, 1.0)

    def report_inventory(self, now: float) -> None:
        """Tell the forwarder which tasks we hold: at start, and after the broker forgot our
        consumer (a rebuilt task queue). It fails the tasks lost with a rebuilt queue
        (forwarder/queue_health.py). Confirmed; retried until it is."""
        if self.broker.consumer_lost:
            self.broker.consumer_lost = False
            self._inventory_due = True
        sent = self._inventory_sent
        if sent is not None and sent.done():
            self._inventory_sent = None
            if sent.exception() is not None:
                log.warning("the task inventory was not confirmed (%s); sending it again", sent.exception())
                self._inventory_due = True
        if not self._inventory_due or self._inventory_sent is not None or not self.broker.subscribed():
            return
        if now - self._last_inventory_try < _SUBSCRIBE_RETRY_S:
            return
        self._last_inventory_try = now
        self._inventory_due = False
        held = self.ledger.held_ids()
        self._inventory_sent = self.broker.publish_events(TaskEvents(held=held, inventory_at=time.time()))
        log.info("reported the %d tasks we hold", len(held))

    def ensure_subscribed(self, now: float) -> None:
        if self.broker.subscribed() or self.stopping or now - self._last_subscribe_try < _SUBSCRIBE_RETRY_S:
            return
        self._last_subscribe_try = now
        try:
            if self.broker.subscribe():
                log.info("consuming tasks from %s", self.connection.task_queue)
            else:
                log.info("taking the cancellations waiting in the control queue before any task")
            if self.connection.control_queue is None:
                log.warning(
                    "connection.json names no control queue (written by an older version): this agent takes no "
                    "cancellations until the endpoint registers again (taskfabric endpoint start)"
                )
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
            if self.stopping:  # delivered before the broker saw us stop consuming: not ours to run
                self.broker.requeue(delivery)
                continue
            self.functions.add(batch.functions)
            fresh = self.ledger.stage([batch])
            if not fresh:
                self.broker.ack(delivery)  # nothing new in it: a redelivery
                continue
            self.acks.track(delivery, {held.task_id for held in fresh})
            for held in fresh:
                if default_walltime and held.task.walltime_s is None:
                    held.task = dataclasses.replace(held.task, walltime_s=default_walltime)
            self.waiting.extend(self._allowed(self._not_cancelled(fresh)))

    def process_cancellations(self, now: float) -> None:
        """Record each cancellation durably, ack it, then drop the named tasks waiting here and
        cancel those on managers (see the module docstring)."""
        while True:
            try:
                cancel, delivery = self.broker.cancels.get_nowait()
            except queue.Empty:
                break
            self.ledger.record_cancels(cancel.task_ids)
            self.broker.ack(delivery)
            task_ids = set(cancel.task_ids)
            dropped = self._drop_waiting(task_ids)
            grace_period_s = cancel.grace_period_s
            if grace_period_s is None:
                grace_period_s = self.config.cancel_grace_period_s
            on_managers = self.interchange.cancel(task_ids, grace_period_s=grace_period_s)
            log.info(
                "cancel of %d tasks: %d dropped before dispatch, %d being stopped on managers",
                len(task_ids),
                dropped,
                len(on_managers),
            )
        if now - self._last_cancel_purge >= _CANCEL_PURGE_PERIOD_S:
            self._last_cancel_purge = now
            self.ledger.forget_expired_cancels()

    def _drop_waiting(self, task_ids: set[uuid.UUID]) -> int:
        """Answer the waiting tasks among `task_ids` as cancelled; returns how many."""
        dropped = [held for held in self.waiting if held.task_id in task_ids]
        if dropped:
            self.waiting = collections.deque(held for held in self.waiting if held.task_id not in task_ids)
            self.outbox.extend(_cancelled_result(held) for held in dropped)
        return len(dropped)

    def _not_cancelled(self, held_tasks: list[HeldTask]) -> list[HeldTask]:
        """The tasks to run; the ones already cancelled are answered instead (never dispatched)."""
        runnable = []
        for held in held_tasks:
            if self.ledger.is_cancelled(held.task_id):
                log.info("task %s arrived after its cancellation; dropped", held.task_id)
                self.outbox.append(_cancelled_result(held))
            else:
                runnable.append(held)
        return runnable

    def _allowed(self, held_tasks: list[HeldTask]) -> list[HeldTask]:
        """The tasks the allow-list lets run; the others are answered `FUNCTION_NOT_ALLOWED` and
        never dispatched (defence in depth: the forwarder refused them at submit already, so one
        here was published around it)."""
        allowed = self.allowed_functions
        if allowed is None:
            return held_tasks
        runnable = []
        for held in held_tasks:
            if held.task.function_id in allowed:
                runnable.append(held)
                continue
            log.warning(
                "task %s names function %s, which the allow-list does not list: refused, not run",
                held.task_id,
                held.task.function_id,
            )
            self.outbox.append(_not_allowed_result(held, self.connection.endpoint_id))
        return runnable

    def flush_ledger(self, now: float, *, force: bool = False) -> None:
        """Write staged tasks (group commit) and ack the messages whose tasks are all safe now.
        While the ledger refuses writes, retry with back-off (see `_ledger_failed`)."""
        if self.degraded_reason is not None:
            if now < self._ledger_retry_at:
                return
        else:
            staged = self.ledger.staged
            if not staged or not (force or staged >= _LEDGER_FLUSH_COUNT or now - self._last_flush >= _LEDGER_FLUSH_S):
                return
        self._last_flush = now
        try:
            written = self.ledger.flush()
        except LedgerError as exc:
            self._ledger_failed(exc, now)
            return
        self._now_safe(written)
        if self.degraded_reason is not None:
            self._ledger_recovered()

    def _ledger_failed(self, exc: LedgerError, now: float) -> None:
        """The disk refused a write: take no new tasks (their messages stay unacked, so nothing is
        lost if we die), report `degraded`, retry later; tasks in hand keep running."""
        if self.degraded_reason is None:
            log.error("%s; taking no new tasks until the ledger can write again", exc)
            self.degraded_reason = str(exc)
            self._ledger_retry_s = _LEDGER_RETRY_INITIAL_S
            self._last_status = 0.0  # say so now
            self.broker.pause()
        else:
            self._ledger_retry_s = min(_LEDGER_RETRY_MAX_S, self._ledger_retry_s * 2)
        self._ledger_retry_at = now + self._ledger_retry_s

    def _ledger_recovered(self) -> None:
        log.warning("the ledger writes again; taking tasks")
        self.degraded_reason = None
        self._last_status = 0.0
        if not self.stopping:
            self.broker.resume()

    def _now_safe(self, task_ids: list[uuid.UUID]) -> None:
        for delivery in self.acks.now_safe(task_ids):
            self.broker.ack(delivery)

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

    def check_scaler(self) -> None:
        """A scaling thread that died for good stops the agent (gracefully: running tasks may
        finish, waiting ones go back to the broker) with `RET_CRASHED`, so its supervisor starts
        a fresh one rather than leaving an endpoint that never gets a block again."""
        failure = self.scaler.failure()
        if failure is None or self.exit_code != RET_OK:
            return
        log.error("the scaling thread failed (%s); stopping so the supervisor starts the agent again", failure)
        self.exit_code = RET_CRASHED
        self.stop()

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
            if self.ledger.is_cancelled(held.task_id):  # lost while being cancelled: no retry
                self.outbox.append(_cancelled_result(held))
                continue
            decision = retry_decision(held.attempts, self.config.max_retries_on_system_failure)
            held.attempts = decision.attempts
            try:
                self.ledger.set_attempts(held.task_id, held.attempts)
            except LedgerError as exc:  # the count in memory still holds; a restart may undercount
                self._ledger_failed(exc, time.monotonic())
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
        results = self.outbox.take()
        if not results:
            return
        for ticket, chunk in self.broker.publish_results(results):
            self.outbox.sent(ticket, chunk)

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
            results = self.outbox.settled(outcome.ticket, outcome.results)
            if outcome.error is None:
                confirmed.extend(result.task_id for result in results)
            else:
                log.warning("%d results not confirmed (%s); kept on disk for re-sending", len(results), outcome.error)
                self._store_results(results)
        if confirmed:
            self.ledger.complete(confirmed)
            self._now_safe(confirmed)

    def _store_results(self, results: list[Result]) -> bool:
        """Keep unconfirmed results on disk; while the disk refuses, keep them in memory to re-send."""
        try:
            self._now_safe(self.ledger.flush())
            self.ledger.store_results(results)
        except LedgerError as exc:
            self._ledger_failed(exc, time.monotonic())
            self.outbox.extend(results)
            return False
        self._has_stored_results = True
        return True

    def republish_stored_results(self, now: float) -> None:
        if (
            not self._has_stored_results
            or not self.broker.connected
            or now - self._last_republish < _REPUBLISH_PERIOD_S
        ):
            return
        self._last_republish = now
        stored = [result for result in self.ledger.stored_results() if not self.outbox.is_in_flight(result.task_id)]
        if not stored:
            self._has_stored_results = self.ledger.counts()["stored_results"] > self.outbox.tasks_in_flight
            return
        log.info("re-publishing %d stored results", len(stored))
        self.outbox.extend(stored)
        self.publish_results()

    def report_status(self, now: float) -> None:
        if now - self._last_status < self._status_period_s:
            return
        self._last_status = now
        self.broker.publish_status(self._status(self._reported_state()))

    def report_offline(self, *, timeout_s: float = 5.0) -> None:
        """On a clean stop: tell the service at once (and wait for the broker's confirm), so it
        does not show the endpoint online until its reports go stale."""
        if not self.broker.connected:
            return
        try:
            self.broker.publish_status(self._status(EndpointState.OFFLINE)).result(timeout=timeout_s)
            log.info("reported offline")
        except Exception as exc:  # BrokerError, or no confirm in time: the report goes stale instead
            log.warning("could not report offline: %s", exc)

    def _status(self, state: EndpointState) -> EndpointStatus:
        summary = self.interchange.summary()
        blocks = self.scaler.status()
        return EndpointStatus(
            endpoint_id=self.connection.endpoint_id,
            sent_at=time.time(),
            state=state.value,
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
            status_reason=self.degraded_reason or "",
            blocks=[
                BlockReport(
                    block_id=record.block_id,
                    job_id=record.job_id,
                    state=record.state.value,
                    submitted_at=record.submitted_at,
                )
                for record in blocks.live[:MAX_BLOCK_REPORTS]
            ],
        )

    def note_broker_refusal(self) -> None:
        """Say in `agent.problem` (read by `endpoint status`) while the broker refuses our credentials."""
        refusal = self.broker.refusal()
        if refusal is not None and not self._refused:
            self._refused = True
            message = (
                f"the broker refused the endpoint's credentials ({refusal}); they were replaced or revoked "
                "(the endpoint was registered again, or deleted)"
            )
            log.error("%s; run `taskfabric endpoint restart` to register again", message)
            self.paths.problem.write_text(message + "\n")
        elif refusal is None and self._refused and self.broker.connected:
            self._refused = False
            log.info("the broker accepts the endpoint's credentials again")
            self.paths.problem.unlink(missing_ok=True)

    def _reported_state(self) -> EndpointState:
        if self.stopping:
            return EndpointState.DRAINING
        return EndpointState.ONLINE if self.degraded_reason is None else EndpointState.DEGRADED

    def regulate_intake(self) -> None:
        """Stop taking tasks while `task_buffer` of them wait for a manager; start again at half."""
        if self.stopping or self.degraded_reason is not None:
            return
        if not self.broker.paused and len(self.waiting) >= self.config.task_buffer:
            log.debug("%d tasks waiting; pausing intake", len(self.waiting))
            self.broker.pause()
        elif self.broker.paused and len(self.waiting) <= self.config.task_buffer // 2:
            self.broker.resume()

    def hand_back_waiting(self) -> None:
        """While stopping: publish the tasks that wait for a manager (never run) back to the task
        queue, and on the broker's confirm drop them from the ledger. Their messages are acked
        first (a flush), so the handed-back copies are the only ones. Tasks already retried after a
        lost run keep their count in the ledger instead; so do all tasks when the broker is
        unreachable or the registration names no tasks exchange: they run at the next start."""
        if self._handed_back:
            return
        self._handed_back = True  # one attempt: each waits for confirms, and the stop must not drag on
        fresh = [held for held in self.waiting if held.attempts == 0]
        if not fresh or self.connection.tasks_exchange is None or not self.broker.connected:
            return
        self.flush_ledger(time.monotonic(), force=True)
        batches = self._batches_of(fresh)
        futures = self.broker.hand_back(batches) or []
        handed: set[uuid.UUID] = set()
        for batch, future in zip(batches, futures, strict=True):
            try:
                future.result(timeout=_HAND_BACK_WAIT_S)
            except Exception as exc:  # BrokerError or no confirm: they stay in the ledger
                log.warning("could not hand %d tasks back to the broker: %s", len(batch.tasks), exc)
                continue
            handed.update(task.task_id for task in batch.tasks)
        if handed:
            self.waiting = collections.deque(held for held in self.waiting if held.task_id not in handed)
            self.ledger.release(handed)
            self.ledger.flush()
            log.info("handed %d tasks back to the broker (not started here)", len(handed))

    def _batches_of(self, held: list[HeldTask]) -> list[TaskBatch]:
        by_python: dict[str, list[HeldTask]] = collections.defaultdict(list)
        for item in held:
            by_python[item.client_python].append(item)
        batches = []
        for client_python, items in by_python.items():
            for start in range(0, len(items), _HAND_BACK_PER_MESSAGE):
                chunk = [item.task for item in items[start : start + _HAND_BACK_PER_MESSAGE]]
                functions = self.functions.get({task.function_id for task in chunk})
                batches.append(TaskBatch(tasks=chunk, functions=functions, client_python=client_python))
        return batches

    def stop_when_idle(self, now: float) -> None:
        """Stop gracefully after `idle_shutdown_s` without a task (a multi-user endpoint's user
        endpoints use it; their parent starts them again on the next task)."""
        limit = self.config.idle_shutdown_s
        if limit is None or self.stopping:
            return
        busy = self.waiting or self.interchange.summary().outstanding or not self.outbox.empty or self.ledger.staged
        if busy or self._has_stored_results:
            self._last_busy = now
        elif now - self._last_busy >= limit:
            log.info("no task for %g s (idle_shutdown_s): stopping", limit)
            self.stop()

    def advance_shutdown(self, now: float) -> None:
        if not self.stopping:
            return
        self.hand_back_waiting()
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
        if self.outbox.empty or now >= self._stop_deadline + 10.0:
            unconfirmed = self.outbox.take_unconfirmed()
            if unconfirmed and self._store_results(unconfirmed):
                log.warning("%d results unconfirmed at exit; stored for the next start", len(unconfirmed))
            elif unconfirmed:
                log.error(
                    "%d results unconfirmed at exit and the ledger cannot store them; their tasks run again "
                    "at the next start if they were written",
                    len(unconfirmed),
                )
            self.finished = True

    # --- status for tests and the CLI ---------------------------------------------------

    @property
    def interchange_address(self) -> str:
        return self.sockets.address


def _status_period_s(config: EndpointConfig, connection: EndpointConnection) -> float:
    """The config's `status_period_s` drives the reports; the service's suggestion (from the
    registration) only warns when the config asks for fewer reports than it expects."""
    suggested = connection.status_period_s
    if suggested is not None and config.status_period_s > suggested:
        log.warning(
            "status_period_s is %g s but the service expects a report every %g s: it may show the endpoint "
            "offline between reports",
            config.status_period_s,
            suggested,
        )
    return config.status_period_s


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


def allowed_functions_of(config: EndpointConfig, connection: EndpointConnection) -> frozenset[uuid.UUID] | None:
    """The allow-list the agent enforces: config.yaml's when it sets one, else the one the
    forwarder answered at registration (set through the API); None: any function."""
    if config.allowed_functions is not None:
        return config.allowed_function_ids
    if connection.allowed_functions is None:
        return None
    return frozenset(uuid.UUID(function_id) for function_id in connection.allowed_functions)


def _not_allowed_result(held: HeldTask, endpoint_id: uuid.UUID) -> Result:
    return _error_result(
        held,
        ErrorCode.FUNCTION_NOT_ALLOWED,
        f"endpoint {endpoint_id} does not run function {held.task.function_id}: its allow-list does not list it "
        "(the task never ran)",
    )


def _cancelled_result(held: HeldTask) -> Result:
    return _error_result(held, ErrorCode.TASK_CANCELLED, "the task was cancelled before it ran")
