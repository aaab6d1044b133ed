"""The message types: plain frozen dataclasses that never pack themselves.

Top-level messages (the ones `pack`/`unpack` accept) are registered with a type tag by
`@message(tag)`. Records (`Task`, `Result`, ...) only travel inside them. The annotations are the
schema (see `schema.py`); `check()` adds the cross-field rules.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import TypeVar

from taskfabric.errors import ErrorCode
from taskfabric.protocol.api import BrokerAccess
from taskfabric.protocol.states import EndpointState

__all__ = [
    "MAX_BLOCK_REPORTS",
    "MAX_MANAGER_PREFETCH",
    "MAX_MANAGER_WORKERS",
    "MAX_REGISTER_TEXT_CHARS",
    "MESSAGE_TYPES",
    "BlockReport",
    "CancelTasks",
    "Drain",
    "EndpointStatus",
    "FunctionBody",
    "Heartbeat",
    "ManagerAccepted",
    "ManagerRegister",
    "Message",
    "Result",
    "ResultBatch",
    "ResultBlob",
    "StartUserEndpoint",
    "Task",
    "TaskBatch",
    "TaskError",
    "TaskEvents",
    "TaskStarted",
    "TasksFinished",
]

_M = TypeVar("_M")

#: blocks one status report may list (an agent with more reports its oldest)
MAX_BLOCK_REPORTS = 200

#: type tag -> top-level message class
MESSAGE_TYPES: dict[str, type] = {}
#: top-level message class -> type tag
TAG_OF: dict[type, str] = {}


def message(tag: str) -> Callable[[type[_M]], type[_M]]:
    """Register a dataclass as a top-level message with the wire type tag `tag`."""

    def register(cls: type[_M]) -> type[_M]:
        if tag in MESSAGE_TYPES:
            raise TypeError(f"duplicate message tag {tag!r}")
        MESSAGE_TYPES[tag] = cls
        TAG_OF[cls] = tag
        return cls

    return register


# --- records ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionBody:
    """A registered function's serialized body (opaque bytes; only workers unpickle it)."""

    function_id: uuid.UUID
    body: bytes
    python_version: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One invocation: which function, with which opaque argument payload."""

    task_id: uuid.UUID
    function_id: uuid.UUID
    payload: bytes
    walltime_s: float | None = None
    submitted_at: float | None = None
    #: the Executor's task group (None for tasks submitted outside a group)
    task_group_id: uuid.UUID | None = None
    #: who submitted it (a username, for logging on the endpoint; never a credential)
    user: str = ""
    #: best-effort resource request, e.g. {"num_cores": 2}; carried to the worker's environment
    resource_specification: dict[str, int] = dataclasses.field(default_factory=dict)
    #: where the worker uploads a result of at least `result_upload_min_bytes` bytes (the
    #: forwarder's URL; "" = the result rides the broker), with the forwarder's signed, expiring
    #: grant for this task alone (`protocol/result_uploads.py`)
    result_upload_url: str = ""
    result_upload_grant: str = ""
    result_upload_min_bytes: int = 0

    def check(self) -> None:
        if self.walltime_s is not None and not self.walltime_s > 0:
            raise ValueError("walltime_s must be positive")
        if self.result_upload_min_bytes < 0:
            raise ValueError("result_upload_min_bytes must not be negative")
        for key, value in self.resource_specification.items():
            if value < 0:
                raise ValueError(f"resource_specification.{key} must not be negative")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskError:
    """Why a task failed. `exception` is the pickled exception (opaque), when it pickled."""

    code: str
    message: str
    traceback: str = ""
    exception_type: str = ""
    exception: bytes | None = None

    @property
    def error_code(self) -> ErrorCode | None:
        """The known `ErrorCode`, or None for a code from a newer peer."""
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResultBlob:
    """A result the worker uploaded to the forwarder's blob store: the blob's `name`, `size` and
    `sha256` (hex), and the forwarder's `receipt` (its HMAC over the task id and those three), so
    an endpoint cannot name a blob the forwarder did not write for that task."""

    name: str
    size: int
    sha256: str
    receipt: str

    def check(self) -> None:
        if self.size < 0:
            raise ValueError("size must not be negative")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The outcome of one task: a pickled value (or the blob it was uploaded to) when `ok`, else a
    `TaskError`."""

    task_id: uuid.UUID
    ok: bool
    value: bytes | None = None
    error: TaskError | None = None
    worker_python: str = ""
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 1
    #: the task's own captured output (the last `max_output_bytes` of each, with a note when cut)
    stdout: str = ""
    stderr: str = ""
    #: the value, uploaded by the worker (`value` is then None): only this reference rides the broker
    value_blob: ResultBlob | None = None

    def check(self) -> None:
        if self.ok and self.value is None and self.value_blob is None:
            raise ValueError("an ok result needs a value or a value_blob")
        if not self.ok and self.error is None:
            raise ValueError("a failed result needs an error")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted:
    """A worker started a task (its `attempt`-th run; 1 for the first)."""

    task_id: uuid.UUID
    started_at: float
    attempt: int = 1

    def check(self) -> None:
        if self.attempt < 1:
            raise ValueError("attempt must be at least 1")


# --- top-level messages -------------------------------------------------------------------


@message("task_batch")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskBatch:
    """Tasks, with the bodies of the functions they call that the receiver may not have yet.

    The forwarder includes every body its tasks need (once per message, not per task); the
    interchange and managers send only the bodies the next hop has not seen."""

    tasks: list[Task]
    functions: list[FunctionBody] = dataclasses.field(default_factory=list)
    client_python: str = ""


@message("result_batch")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResultBatch:
    """Results of finished tasks."""

    results: list[Result]


@message("task_events")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskEvents:
    """Progress of tasks that have not finished yet, batched (manager -> interchange -> agent ->
    forwarder, on the endpoint's result queue)."""

    started: list[TaskStarted] = dataclasses.field(default_factory=list)
    #: an inventory (sent when `inventory_at` is set): every task the agent holds, not yet answered.
    #: The forwarder uses it after rebuilding the endpoint's task queue (forwarder/queue_health.py)
    held: list[uuid.UUID] = dataclasses.field(default_factory=list)
    inventory_at: float | None = None


@message("cancel_tasks")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CancelTasks:
    """Cancel these tasks (forwarder -> agent, agent -> manager): drop them if not started, else
    stop their workers (SIGTERM, then SIGKILL after `grace_period_s`). Each ends `cancelled`."""

    task_ids: list[uuid.UUID]
    grace_period_s: float | None = None

    def check(self) -> None:
        if self.grace_period_s is not None and not self.grace_period_s >= 0:
            raise ValueError("grace_period_s must not be negative")


@message("tasks_finished")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TasksFinished:
    """Forwarder replica -> every replica (the replicas fan-out exchange): these tasks' outcomes are
    stored. A peer reads the ones its results streams wait for from the store (the source of
    truth); the notice carries ids only, so it stays small whatever the results weigh."""

    #: the announcing replica (it ignores its own notices: its streams were served already)
    replica_id: uuid.UUID
    task_ids: list[uuid.UUID]


@message("start_user_endpoint")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StartUserEndpoint:
    """Forwarder -> a multi-user endpoint's parent agent, on the parent's control queue: tasks of
    `user` with this `user_endpoint_config` wait in the queues of user endpoint `endpoint_id`;
    start (or keep) its process. `broker` is the user endpoint's own access: its queues only (see
    endpoint_agent/multi_user/__init__.py for the design)."""

    endpoint_id: uuid.UUID
    parent_endpoint_id: uuid.UUID
    #: the submitter: taskfabric username and user id, and (Globus sign-in) their identity's
    #: username and `sub`; what identity_mapping rules match against
    user: str
    user_id: uuid.UUID
    identity_username: str = ""
    identity_sub: str = ""
    #: the submitter's `user_endpoint_config` as a JSON object ("{}" when none)
    user_endpoint_config_json: str = "{}"
    #: freshly keyed access to the user endpoint's queues; None while it reported online (its key
    #: is not changed under it: the parent uses the last one it was given)
    broker: BrokerAccess | None = None
    sent_at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockReport:
    """One live block of an endpoint, as its agent reports it: the scheduler's job id and state."""

    block_id: str
    job_id: str
    state: str
    submitted_at: float


@message("endpoint_status")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointStatus:
    """An endpoint agent's periodic heartbeat and status report."""

    endpoint_id: uuid.UUID
    sent_at: float
    state: str
    heartbeat_period_s: float
    managers: int = 0
    workers: int = 0
    idle_workers: int = 0
    outstanding_tasks: int = 0
    pending_blocks: int = 0
    running_blocks: int = 0
    hostname: str = ""
    python_version: str = ""
    agent_version: str = ""
    #: the scaling strategy's last decision, in words
    scaling: str = ""
    #: why the agent is `degraded` (empty otherwise)
    status_reason: str = ""
    #: its live (pending and running) blocks, at most `MAX_BLOCK_REPORTS` (older agents send none)
    blocks: list[BlockReport] = dataclasses.field(default_factory=list)

    STATES = tuple(EndpointState)

    def check(self) -> None:
        if self.state not in self.STATES:
            raise ValueError(f"state must be one of {', '.join(self.STATES)}")
        if len(self.blocks) > MAX_BLOCK_REPORTS:
            raise ValueError(f"blocks: at most {MAX_BLOCK_REPORTS} block reports")


#: the most workers one manager may announce (a node with more cores runs several managers)
MAX_MANAGER_WORKERS = 4096
#: the most tasks a manager may ask to hold beyond its workers
MAX_MANAGER_PREFETCH = 1 << 20
#: the longest text field of a registration (ids, host name, versions, token)
MAX_REGISTER_TEXT_CHARS = 255
_MAX_PID = (1 << 31) - 1
_REGISTER_TEXT_FIELDS = (
    "manager_id",
    "hostname",
    "python_version",
    "taskfabric_version",
    "block_id",
    "registration_token",
)


@message("manager_register")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ManagerRegister:
    """A manager introducing itself to the interchange."""

    manager_id: str
    hostname: str
    workers: int
    prefetch: int = 0
    python_version: str = ""
    taskfabric_version: str = ""
    block_id: str | None = None
    pid: int = 0
    #: the secret the agent handed to the managers it launched; others are turned away
    registration_token: str = ""

    def check(self) -> None:
        # a registration comes from a process the agent does not control (a buggy or hostile
        # manager): every number must stay in a range the agent's sums and status reports can
        # carry (msgpack ints stop at 2**64-1), and every string short enough to log
        if not 1 <= self.workers <= MAX_MANAGER_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_MANAGER_WORKERS}")
        if not 0 <= self.prefetch <= MAX_MANAGER_PREFETCH:
            raise ValueError(f"prefetch must be between 0 and {MAX_MANAGER_PREFETCH}")
        if not 0 <= self.pid <= _MAX_PID:
            raise ValueError(f"pid must be between 0 and {_MAX_PID}")
        for name in _REGISTER_TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None and len(value) > MAX_REGISTER_TEXT_CHARS:
                raise ValueError(f"{name} must be at most {MAX_REGISTER_TEXT_CHARS} characters")


@message("manager_accepted")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ManagerAccepted:
    """The interchange's answer to a registration, with the heartbeat timing to follow."""

    heartbeat_period_s: float
    heartbeat_threshold_s: float


@message("heartbeat")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """A liveness ping, both ways between interchange and manager."""

    sent_at: float


@message("drain")
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    """Stop taking tasks, finish the ones in hand, then leave (interchange -> manager) or
    announce leaving (manager -> interchange)."""

    reason: str = ""
    deadline_s: float | None = None


Message = (
    TaskBatch
    | ResultBatch
    | TaskEvents
    | CancelTasks
    | TasksFinished
    | StartUserEndpoint
    | EndpointStatus
    | ManagerRegister
    | ManagerAccepted
    | Heartbeat
    | Drain
)
