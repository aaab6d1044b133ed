"""The interchange: the agent's view of its managers, over a ZeroMQ ROUTER.

It registers managers (checking the registration token the agent handed out), tracks what each
one holds, sends task batches according to `plan_dispatch`, collects result batches and task starts
(`TaskEvents`, passed on only for tasks the manager still holds), exchanges
heartbeats, and declares a manager lost when it has been silent for `heartbeat_threshold_s` (or
says it is leaving): the tasks it held come back as lost, for the agent to retry or fail.

It owns no tasks of its own: the agent passes waiting tasks in and receives results and lost tasks
out of each step. Used from the agent's loop thread only.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from taskfabric.endpoint_agent.blocks import BlockActivity
from taskfabric.endpoint_agent.dispatch import ManagerSlots, plan_dispatch
from taskfabric.endpoint_agent.ledger import HeldTask
from taskfabric.endpoint_agent.zmq_router import RouterSocket
from taskfabric.errors import ErrorCode, ProtocolError
from taskfabric.protocol import (
    CancelTasks,
    Drain,
    FunctionBody,
    Heartbeat,
    ManagerAccepted,
    ManagerRegister,
    Message,
    Result,
    ResultBatch,
    TaskBatch,
    TaskEvents,
    TaskStarted,
    pack,
    unpack,
)

__all__ = ["MAX_REGISTRATION_BYTES", "Interchange", "InterchangeSummary", "LostTask", "ManagerRecord"]

log = logging.getLogger(__name__)

#: the largest first message of a manager that is decoded (a registration is about 300 bytes)
MAX_REGISTRATION_BYTES = 16384

FunctionSource = Callable[[set[uuid.UUID]], list[FunctionBody]]


@dataclasses.dataclass(eq=False)
class ManagerRecord:
    """A registered manager and the tasks it holds."""

    manager_id: bytes
    info: ManagerRegister
    last_heard: float
    outstanding: dict[uuid.UUID, HeldTask] = dataclasses.field(default_factory=dict)
    known_functions: set[uuid.UUID] = dataclasses.field(default_factory=set)
    draining: bool = False
    #: wall-clock time of its last result (for the scaling strategy's idle timer)
    last_result_at: float | None = None

    @property
    def slots(self) -> ManagerSlots:
        return ManagerSlots(self.manager_id, self.info.workers, self.info.prefetch, len(self.outstanding))

    def describe(self) -> str:
        block = f", block {self.info.block_id}" if self.info.block_id else ""
        return f"manager {self.info.manager_id[:8]} on {self.info.hostname} (pid {self.info.pid}{block})"


@dataclasses.dataclass(frozen=True, slots=True)
class LostTask:
    """A task whose run the fabric lost (worker or manager gone)."""

    held: HeldTask
    code: ErrorCode
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class InterchangeSummary:
    managers: int
    workers: int
    idle_workers: int
    outstanding: int
    blocks: frozenset[str]


@dataclasses.dataclass
class StepOutput:
    """What one `process_messages` call produced."""

    results: list[tuple[HeldTask, Result]] = dataclasses.field(default_factory=list)
    started: list[tuple[HeldTask, TaskStarted]] = dataclasses.field(default_factory=list)
    lost: list[LostTask] = dataclasses.field(default_factory=list)
    registered: list[ManagerRecord] = dataclasses.field(default_factory=list)


class Interchange:
    """Managers, their capacity and their tasks; the ROUTER socket is `sockets` (a
    `ManagerSockets`, or any `RouterSocket`, e.g. an in-memory one in unit tests)."""

    def __init__(
        self,
        sockets: RouterSocket,
        *,
        heartbeat_period_s: float,
        heartbeat_threshold_s: float,
        registration_token: str,
        function_source: FunctionSource,
    ) -> None:
        self.sockets = sockets
        self.heartbeat_period_s = heartbeat_period_s
        self.heartbeat_threshold_s = heartbeat_threshold_s
        self._token = registration_token
        self._function_source = function_source
        self.managers: dict[bytes, ManagerRecord] = {}
        self._last_heartbeat = 0.0

    # --- inbound ------------------------------------------------------------------------

    def process_messages(self, now: float | None = None) -> StepOutput:
        """Handle everything the managers sent since the last call."""
        now = time.monotonic() if now is None else now
        out = StepOutput()
        for manager_id, payload in self.sockets.receive_all():
            message = self._decode(manager_id, payload)
            if message is None:
                continue
            if isinstance(message, ManagerRegister):
                self._register(manager_id, message, now, out)
                continue
            record = self.managers.get(manager_id)
            if record is None:
                log.debug("message from unregistered manager %r ignored", manager_id[:8])
                continue
            record.last_heard = now
            if isinstance(message, ResultBatch):
                self._collect(record, message, out)
            elif isinstance(message, TaskEvents):
                self._note_started(record, message, out)
            elif isinstance(message, Drain):
                self._remove(
                    record,
                    ErrorCode.MANAGER_LOST,
                    f"{record.describe()} left ({message.reason or 'drained'})",
                    out.lost,
                )
        return out

    def _decode(self, manager_id: bytes, payload: bytes) -> Message | None:
        """The message in `payload`, or None (logged) when it is not one. A peer that has not
        registered is told it is refused (a buggy manager then exits instead of waiting), and
        its frame is not even decoded when it is larger than any registration can be: what an
        unauthenticated peer costs the agent stays small."""
        registered = manager_id in self.managers
        if not registered and len(payload) > MAX_REGISTRATION_BYTES:
            self._refuse(
                manager_id, f"a {len(payload)}-byte message before registering (at most {MAX_REGISTRATION_BYTES})"
            )
            return None
        try:
            return unpack(payload)
        except ProtocolError as exc:
            if registered:
                log.warning("bad message from manager %r: %s", manager_id[:8], exc)
            else:
                self._refuse(manager_id, str(exc))
            return None

    def _refuse(self, manager_id: bytes, problem: str) -> None:
        log.warning("refusing manager %r: %s", manager_id[:16], problem[:300])
        self.sockets.send(manager_id, pack(Drain(reason=f"registration refused: {problem[:300]}")))

    def _register(self, manager_id: bytes, message: ManagerRegister, now: float, out: StepOutput) -> None:
        if message.registration_token != self._token:
            log.warning("refusing manager %s from %s: wrong registration token", message.manager_id, message.hostname)
            self.sockets.send(manager_id, pack(Drain(reason="registration refused: wrong registration token")))
            return
        previous = self.managers.get(manager_id)
        if previous is not None:
            self._remove(previous, ErrorCode.MANAGER_LOST, f"{previous.describe()} registered again", out.lost)
        record = ManagerRecord(manager_id=manager_id, info=message, last_heard=now)
        self.managers[manager_id] = record
        self.sockets.send(
            manager_id,
            pack(
                ManagerAccepted(
                    heartbeat_period_s=self.heartbeat_period_s, heartbeat_threshold_s=self.heartbeat_threshold_s
                )
            ),
        )
        log.info("%s registered: %d workers, prefetch %d", record.describe(), message.workers, message.prefetch)
        out.registered.append(record)

    @staticmethod
    def _collect(record: ManagerRecord, batch: ResultBatch, out: StepOutput) -> None:
        record.last_result_at = time.time()
        for result in batch.results:
            held = record.outstanding.pop(result.task_id, None)
            if held is not None:
                out.results.append((held, result))

    @staticmethod
    def _note_started(record: ManagerRecord, events: TaskEvents, out: StepOutput) -> None:
        for event in events.started:
            held = record.outstanding.get(event.task_id)
            if held is not None:
                out.started.append((held, event))

    def _remove(self, record: ManagerRecord, code: ErrorCode, message: str, lost: list[LostTask]) -> None:
        self.managers.pop(record.manager_id, None)
        if record.outstanding:
            log.warning("%s: %d tasks lost", message, len(record.outstanding))
        lost.extend(LostTask(held, code, message) for held in record.outstanding.values())
        record.outstanding.clear()

    # --- outbound -----------------------------------------------------------------------

    def dispatch(self, waiting: collections.deque[HeldTask]) -> int:
        """Send as many waiting tasks as the managers can take; returns how many went out."""
        if not waiting or not self.managers:
            return 0
        open_managers = [record.slots for record in self.managers.values() if not record.draining]
        sent = 0
        for manager_id, count in plan_dispatch(open_managers, len(waiting)).items():
            tasks = [waiting.popleft() for _ in range(count)]
            if self._send_tasks(self.managers[manager_id], tasks):
                sent += count
            else:
                waiting.extendleft(reversed(tasks))
        return sent

    def _send_tasks(self, record: ManagerRecord, tasks: list[HeldTask]) -> bool:
        needed = {held.task.function_id for held in tasks} - record.known_functions
        functions = self._function_source(needed) if needed else []
        batch = TaskBatch(
            tasks=[held.task for held in tasks], functions=functions, client_python=tasks[0].client_python
        )
        if not self.sockets.send(record.manager_id, pack(batch)):
            log.warning("%s is unreachable; it will be expired", record.describe())
            record.draining = True
            return False
        record.known_functions.update(body.function_id for body in functions)
        for held in tasks:
            record.outstanding[held.task_id] = held
        return True

    def cancel(self, task_ids: set[uuid.UUID], *, grace_period_s: float) -> set[uuid.UUID]:
        """Tell each manager holding some of `task_ids` to cancel them; returns the ids found on
        managers. They stay outstanding until the manager answers (`TASK_CANCELLED`, or the real
        result if the task finished first) or is lost."""
        found: set[uuid.UUID] = set()
        for record in list(self.managers.values()):
            mine = [task_id for task_id in task_ids if task_id in record.outstanding]
            if not mine:
                continue
            found.update(mine)
            if not self.sockets.send(
                record.manager_id, pack(CancelTasks(task_ids=mine, grace_period_s=grace_period_s))
            ):
                log.warning("%s is unreachable; cannot cancel %d tasks on it", record.describe(), len(mine))
        return found

    def send_heartbeats(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._last_heartbeat < self.heartbeat_period_s:
            return
        self._last_heartbeat = now
        beat = pack(Heartbeat(sent_at=time.time()))
        for record in list(self.managers.values()):
            self.sockets.send(record.manager_id, beat)

    def expire_lost_managers(self, now: float | None = None) -> list[LostTask]:
        """Managers silent for longer than the threshold are lost, with their tasks."""
        now = time.monotonic() if now is None else now
        lost: list[LostTask] = []
        for record in list(self.managers.values()):
            silent_s = now - record.last_heard
            if silent_s > self.heartbeat_threshold_s:
                self._remove(
                    record, ErrorCode.MANAGER_LOST, f"{record.describe()} missed heartbeats for {silent_s:.0f} s", lost
                )
        return lost

    def lose_block(self, block_id: str, reason: str) -> list[LostTask]:
        """The scheduler ended a block: its managers are gone, with their tasks."""
        lost: list[LostTask] = []
        for record in list(self.managers.values()):
            if record.info.block_id == block_id:
                self._remove(record, ErrorCode.MANAGER_LOST, f"{record.describe()} ended: {reason}", lost)
        return lost

    def drain(self, reason: str, *, block_id: str | None = None) -> None:
        """Ask managers (all, or one block's) to finish what they hold and exit."""
        message = pack(Drain(reason=reason))
        for record in self.managers.values():
            if block_id is None or record.info.block_id == block_id:
                record.draining = True
                self.sockets.send(record.manager_id, message)

    # --- reporting ----------------------------------------------------------------------

    def summary(self) -> InterchangeSummary:
        records = list(self.managers.values())
        return InterchangeSummary(
            managers=len(records),
            workers=sum(record.info.workers for record in records),
            idle_workers=sum(record.slots.idle_workers for record in records),
            outstanding=sum(len(record.outstanding) for record in records),
            blocks=frozenset(record.info.block_id for record in records if record.info.block_id),
        )

    def block_activity(self) -> dict[str, BlockActivity]:
        """Managers, workers, outstanding tasks and last result time, per block."""
        grouped: dict[str, list[ManagerRecord]] = collections.defaultdict(list)
        for record in self.managers.values():
            if record.info.block_id:
                grouped[record.info.block_id].append(record)
        activity = {}
        for block_id, records in grouped.items():
            last = [record.last_result_at for record in records if record.last_result_at is not None]
            activity[block_id] = BlockActivity(
                managers=len(records),
                workers=sum(record.info.workers for record in records),
                outstanding_tasks=sum(len(record.outstanding) for record in records),
                last_task_done_at=max(last) if last else None,
            )
        return activity
