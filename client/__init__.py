"""The researcher's client library: `Client` and `Executor`.

`Client` talks to the forwarder over HTTP (register functions, submit tasks, fetch results,
list endpoints); `Executor` is a `concurrent.futures.Executor` that batches submissions in the
background and receives results over the forwarder's WebSocket results stream. Only here (and in
workers) are user payloads unpickled, and here only the user's own results.

State: the Executor's queue of calls not yet sent and its table of futures awaiting results.
"""

from __future__ import annotations

from taskfabric.client.client import Batch, Client, TaskListPage
from taskfabric.client.config import ClientConfig
from taskfabric.client.executor import Executor, ExecutorOptions, TaskFuture
from taskfabric.client.serialization import RemoteTraceback
from taskfabric.errors import (
    AccountNotAllowed,
    AuthenticationError,
    DataIntegrityError,
    DataUnavailable,
    DeserializationFailed,
    EndpointDeleted,
    FunctionNotAllowed,
    IdentityNotMapped,
    InvalidRequest,
    ManagerLost,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    ResultIntegrityError,
    ResultTooLarge,
    ServiceError,
    TaskCancelled,
    TaskDeadLettered,
    TaskExecutionFailed,
    TaskFailed,
    TaskPending,
    TaskQueueLost,
    UserConfigInvalid,
    UserDeleted,
    UserDisabled,
    WalltimeExceeded,
    WorkerLost,
)
from taskfabric.protocol.data_refs import DataRef

__all__ = [
    "AccountNotAllowed",
    "AuthenticationError",
    "Batch",
    "Client",
    "ClientConfig",
    "DataIntegrityError",
    "DataRef",
    "DataUnavailable",
    "DeserializationFailed",
    "EndpointDeleted",
    "Executor",
    "ExecutorOptions",
    "FunctionNotAllowed",
    "IdentityNotMapped",
    "InvalidRequest",
    "ManagerLost",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "RemoteTraceback",
    "ResultIntegrityError",
    "ResultTooLarge",
    "ServiceError",
    "TaskCancelled",
    "TaskDeadLettered",
    "TaskExecutionFailed",
    "TaskFailed",
    "TaskFuture",
    "TaskListPage",
    "TaskPending",
    "TaskQueueLost",
    "UserConfigInvalid",
    "UserDeleted",
    "UserDisabled",
    "WalltimeExceeded",
    "WorkerLost",
]
