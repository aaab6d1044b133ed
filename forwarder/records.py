"""Typed records that cross the forwarder's layers (store <-> services <-> HTTP views).

Plain frozen dataclasses: the store returns them, the services pass them around, `views` turns
them into response bodies. No dicts of loose keys between layers.
"""

from __future__ import annotations

import dataclasses
import uuid

from taskfabric.forwarder.blobs.base import BlobRef
from taskfabric.protocol.messages import BlockReport
from taskfabric.protocol.states import EndpointState, TaskStatus

__all__ = [
    "DeadLetterRecord",
    "EndpointRecord",
    "EndpointState",
    "FunctionRecord",
    "Identity",
    "NewTask",
    "StatusReport",
    "TaskActivity",
    "TaskPage",
    "TaskQuery",
    "TaskRecord",
    "TaskStatus",
    "TaskSummary",
    "TokenOwner",
    "TokenRecord",
    "UserRecord",
]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who made a request: the store's user id, a display name, and which provider vouched."""

    user_id: uuid.UUID
    username: str
    auth: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    user_id: uuid.UUID
    username: str
    auth: str
    created_at: float
    tokens: int = 0
    #: when an administrator disabled the user (None: enabled); its tokens are refused meanwhile
    disabled_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenRecord:
    """A local token as `taskfabric admin list-tokens` shows it: never the token or its hash."""

    token_id: str
    user_id: uuid.UUID
    prefix: str
    label: str
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenOwner:
    """Who a presented token belongs to, and whether it may be used now."""

    identity: Identity
    token_id: str
    expires_at: float | None
    disabled_at: float | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionRecord:
    function_id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    content_hash: str
    python_version: str
    size_bytes: int
    created_at: float
    body: bytes | None = None
    #: what the owner says it does (schema v6; empty for older rows)
    description: str = ""
    #: whether every authenticated user may run it and read its metadata (schema v6)
    public: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """The last status an endpoint reported (None fields: never reported)."""

    state: str | None = None
    last_heartbeat_at: float | None = None
    managers: int = 0
    workers: int = 0
    idle_workers: int = 0
    outstanding_tasks: int = 0
    pending_blocks: int = 0
    running_blocks: int = 0
    hostname: str = ""
    python_version: str = ""
    agent_version: str = ""
    #: the agent's scaling strategy's last decision, in words
    scaling: str = ""
    #: why the agent said it is degraded (empty otherwise)
    status_reason: str = ""
    #: its live blocks with their scheduler job ids (schema v3; empty from older agents)
    blocks: tuple[BlockReport, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointRecord:
    endpoint_id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    queue_secret: str
    broker_username: str
    created_at: float
    metadata: str = "{}"
    status: StatusReport = dataclasses.field(default_factory=StatusReport)
    #: the functions it may run (schema v6 allow-list; None: any)
    allowed_functions: frozenset[uuid.UUID] | None = None


# NewTask and TaskRecord are built once per task on the hot path: not frozen (a frozen dataclass
# costs ~4x more to create); treat their instances as read-only all the same.


@dataclasses.dataclass(slots=True, kw_only=True)
class NewTask:
    """A task accepted for submission, before it is stored."""

    task_id: uuid.UUID
    function_id: uuid.UUID
    payload: bytes
    walltime_s: float | None = None
    resource_specification: dict[str, int] | None = None


@dataclasses.dataclass(slots=True, kw_only=True)
class TaskRecord:
    """A stored task with its outcome (result or error fields) once finished."""

    task_id: uuid.UUID
    owner_id: uuid.UUID
    endpoint_id: uuid.UUID
    function_id: uuid.UUID
    status: TaskStatus
    created_at: float
    completed_at: float | None = None
    result: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    error_exception_type: str | None = None
    error_exception: bytes | None = None
    client_python: str = ""
    worker_python: str = ""
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    task_group_id: uuid.UUID | None = None
    #: the task's captured output (the end of it), once finished
    stdout: str | None = None
    stderr: str | None = None
    #: the size of a result kept in the blob store, known without reading it (see `result_bytes`)
    result_size: int | None = None
    #: the sha256 (hex) of a result kept in the blob store: when its bytes are not read (`result`
    #: None), the results stream and batch answers send this reference and the client downloads
    #: the bytes and checks them
    result_sha256: str | None = None
    #: the name of that blob (`blob_ref`; a worker's upload still in memory is found by it, see
    #: `fresh_uploads`)
    result_blob: str | None = None

    def blob_ref(self) -> BlobRef | None:
        """The blob holding the result (None: the row holds it, or there is none)."""
        if self.result_blob is None:
            return None
        return BlobRef(self.result_blob, self.result_size or 0, self.result_sha256 or "")

    @property
    def result_bytes(self) -> int | None:
        """The result's size in bytes (None: no result), whether or not its bytes were read."""
        if self.result is not None:
            return len(self.result)
        return self.result_size

    @property
    def finished(self) -> bool:
        return self.status.terminal


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterRecord:
    """A dead-lettered message kept for operators: one per task of a dead-lettered task batch
    (`body` is then a `TaskBatch` of that task alone, with its function's body), or one per other
    message (`task_id` None, `body` as received). `body` is None in listings."""

    dead_letter_id: uuid.UUID
    task_id: uuid.UUID | None
    endpoint_id: uuid.UUID | None
    owner_id: uuid.UUID | None
    reason: str
    deliveries: int
    queue: str
    created_at: float
    body: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskQuery:
    """Which of an owner's tasks to list (every filter optional), and one page's place.

    Pages are keyset-paginated, newest first, on (created_at, task_id): `after` is the key of the
    last task of the previous page."""

    owner_id: uuid.UUID
    status: TaskStatus | None = None
    endpoint_id: uuid.UUID | None = None
    function_id: uuid.UUID | None = None
    task_group_id: uuid.UUID | None = None
    since: float | None = None
    limit: int = 100
    after: tuple[float, uuid.UUID] | None = None
    #: every user's tasks, not only the owner's (`endpoint_id` is then required: the caller
    #: owns or manages that endpoint, checked before the query is made)
    all_users: bool = False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskSummary:
    """A task as listings show it: state and timestamps, never its result bytes."""

    task_id: uuid.UUID
    status: TaskStatus
    endpoint_id: uuid.UUID
    function_id: uuid.UUID
    task_group_id: uuid.UUID | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    error_code: str | None
    #: who submitted it
    owner_id: uuid.UUID | None = None

    @property
    def key(self) -> tuple[float, uuid.UUID]:
        """Its place in a listing (newest first: larger keys come first)."""
        return (self.created_at, self.task_id)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskPage:
    """One page of a listing; `next_after` is None on the last page."""

    tasks: list[TaskSummary]
    next_after: tuple[float, uuid.UUID] | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskActivity:
    """An owner's tasks as `taskfabric top` watches them (`GET /v1/activity`): how many there are
    per (endpoint, state), counting the unfinished ones all and the finished ones only within a
    window, and the newest failures (summaries, newest first)."""

    counts: dict[tuple[uuid.UUID, TaskStatus], int]
    failures: list[TaskSummary]
