"""Typed records that cross the forwarder's layers (store <-> services <-> HTTP views).

Plain frozen dataclasses: the store returns them, the services pass them around, `views` turns
them into response bodies. No dicts of loose keys between layers.
"""

from __future__ import annotations

import dataclasses
import uuid

from taskfabric.protocol.states import EndpointState, TaskStatus

__all__ = [
    "EndpointRecord",
    "EndpointState",
    "FunctionRecord",
    "Identity",
    "NewTask",
    "StatusReport",
    "TaskRecord",
    "TaskStatus",
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
    #: the task's captured output (the end of it), once finished
    stdout: str | None = None
    stderr: str | None = None

    @property
    def finished(self) -> bool:
        return self.status.terminal
