"""taskfabric's own error tree.

Every error that leaves a public API is one of these; errors of the libraries underneath
(pika, zmq, sqlalchemy, httpx) are translated at the module that talks to them::

    TaskfabricError
    ├── ConfigError                 a bad config key or value (names the key)
    ├── ProtocolError               bytes that are not a valid taskfabric message
    ├── BrokerError                 anything the message broker said or did not say
    │   ├── BrokerUnavailable       could not connect (after retries) / transport closed
    │   ├── ConnectionLost          the connection dropped; the outcome of in-flight work is unknown
    │   ├── PublishTimeout          no confirm within the bounded wait
    │   ├── Unroutable              a mandatory publish matched no queue
    │   ├── PublishRejected         the broker nacked a publish (e.g. queue full, message too big)
    │   ├── AccessRefused           403 from the broker (permissions, bad credentials)
    │   ├── NotFound                404 from the broker (no such queue / exchange)
    │   └── PreconditionFailed      406 from the broker (e.g. a queue redeclared with other arguments)
    ├── StoreError                  the forwarder's database failed
    ├── LedgerError                 the endpoint agent's ledger (its on-disk SQLite) refused a write
    ├── ProviderError               the batch scheduler (through its Parsl provider) failed a status or cancel call
    │   └── SubmitFailed            a block could not be submitted
    ├── ServiceError                an HTTP call to the forwarder failed; `status` holds the code
    │   ├── AuthenticationError     401: missing, wrong or inactive token
    │   ├── PermissionDenied        403: not yours
    │   ├── NotFoundError           404: unknown id
    │   ├── PayloadTooLarge         413: over the size limit (names the limit)
    │   ├── QuotaExceeded           429: over a per-user quota or rate (names it; `retry_after_s`)
    │   └── InvalidRequest          400 / 422: malformed request
    ├── TaskPending                 the task has no result yet (not a failure)
    └── TaskFailed                  a task ended in error; carries the remote traceback
        ├── TaskExecutionFailed     the function raised and its exception could not be rebuilt
        ├── WorkerLost              the worker process died while running the task
        ├── ManagerLost             the manager running the task stopped answering heartbeats
        ├── WalltimeExceeded        the task ran past its walltime
        ├── ResultTooLarge          the result was over the endpoint's size limit
        ├── DeserializationFailed   the worker could not unpickle the function or its arguments
        ├── TaskDeadLettered        the broker gave up on the task (poison message, bad format)
        ├── EndpointDeleted         the endpoint was deleted before the task ran
        ├── TaskQueueLost           the task was in an endpoint queue a broker crash destroyed
        ├── TaskCancelled           the task was cancelled (`Client.cancel`) before it finished
        ├── UserDeleted             an administrator deleted the task's owner before the task ran
        ├── UserDisabled            an administrator disabled the task's owner before the task ran
        ├── FunctionNotAllowed      the endpoint's allow-list does not list the task's function (its agent refused it)
        ├── IdentityNotMapped       a multi-user endpoint maps the submitter to no local account (nothing ran)
        ├── AccountNotAllowed       the mapped local account is root, denied or does not exist (nothing ran)
        ├── UserConfigInvalid       the user_endpoint_config failed the endpoint's schema or template (names the field)
        ├── ResultIntegrityError    the stored result (a blob) is missing or does not match its sha256 (names the task)
        ├── DataIntegrityError      an argument passed by reference did not match its sha256 on the worker
        └── DataUnavailable         the worker could not fetch an argument passed by reference (expired, refused)

Remote failures travel as an error *code* in the wire protocol (see `ErrorCode`); `TaskFailed.for_code`
maps a code back to its class on the client.
"""

from __future__ import annotations

import enum

__all__ = [
    "AccessRefused",
    "AccountNotAllowed",
    "AuthenticationError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "ConnectionLost",
    "DataIntegrityError",
    "DataUnavailable",
    "DeserializationFailed",
    "EndpointDeleted",
    "ErrorCode",
    "FunctionNotAllowed",
    "IdentityNotMapped",
    "InvalidRequest",
    "LedgerError",
    "ManagerLost",
    "NotFound",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "PreconditionFailed",
    "ProtocolError",
    "ProviderError",
    "PublishRejected",
    "PublishTimeout",
    "QuotaExceeded",
    "ResultIntegrityError",
    "ResultTooLarge",
    "ServiceError",
    "StoreError",
    "SubmitFailed",
    "TaskCancelled",
    "TaskDeadLettered",
    "TaskExecutionFailed",
    "TaskFailed",
    "TaskPending",
    "TaskQueueLost",
    "TaskfabricError",
    "Unroutable",
    "UserConfigInvalid",
    "UserDeleted",
    "UserDisabled",
    "WalltimeExceeded",
    "WorkerLost",
]


class TaskfabricError(Exception):
    """Base class of every error taskfabric raises on purpose."""


class ConfigError(TaskfabricError, ValueError):
    """A configuration key or value is invalid; the message names the key and the source."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        where = f" in {source}" if source else ""
        prefix = f"{key}: " if key else ""
        super().__init__(f"{prefix}{message}{where}")
        self.key = key
        self.source = source


class ProtocolError(TaskfabricError, ValueError):
    """Bytes that do not decode to a valid taskfabric message."""


# --- broker -------------------------------------------------------------------------------


class BrokerError(TaskfabricError):
    """The message broker failed or refused an operation."""


class BrokerUnavailable(BrokerError):
    """No connection to the broker could be made, or the transport is closed."""


class ConnectionLost(BrokerError):
    """The connection dropped while an operation was in flight; its outcome is unknown."""


class PublishTimeout(BrokerError):
    """The broker did not confirm a publish within the bounded wait."""


class Unroutable(BrokerError):
    """A mandatory publish matched no queue (the broker returned it)."""

    def __init__(self, exchange: str, routing_key: str, reply_text: str = "NO_ROUTE") -> None:
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} was unroutable ({reply_text})"
        )
        self.exchange = exchange
        self.routing_key = routing_key


class PublishRejected(BrokerError):
    """The broker negatively acknowledged a publish."""


class AccessRefused(BrokerError):
    """The broker refused the operation for lack of permission (AMQP 403)."""


class NotFound(BrokerError):
    """The broker has no such queue or exchange (AMQP 404)."""


class PreconditionFailed(BrokerError):
    """The broker refused an operation whose preconditions do not hold (AMQP 406)."""


# --- scheduler ----------------------------------------------------------------------------


class ProviderError(TaskfabricError):
    """The batch scheduler, through its Parsl provider, failed to report on or cancel blocks."""


class SubmitFailed(ProviderError):
    """A block could not be submitted. `submitted` lists the blocks of the same request that were."""

    def __init__(self, message: str, *, submitted: list[str] | None = None) -> None:
        super().__init__(message)
        self.submitted: list[str] = list(submitted or [])


# --- service ------------------------------------------------------------------------------


class StoreError(TaskfabricError):
    """The forwarder's store (database) failed."""


class LedgerError(TaskfabricError):
    """The agent's ledger could not write (disk full, read-only, I/O error); nothing staged was lost."""


class ServiceError(TaskfabricError):
    """An HTTP request to the forwarder failed; `status` is the HTTP status code."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.code = code or type(self).__name__


class AuthenticationError(ServiceError):
    status = 401


class PermissionDenied(ServiceError):
    status = 403


class NotFoundError(ServiceError):
    status = 404


class PayloadTooLarge(ServiceError):
    status = 413


class InvalidRequest(ServiceError):
    status = 400


class QuotaExceeded(ServiceError):
    """429: a per-user quota or rate limit refused the request. `quota` names it (its settings
    key), `limit` is its configured value and `retry_after_s` how long to wait before it may pass
    (the `Retry-After` header); nothing was recorded."""

    status = 429

    def __init__(
        self,
        message: str,
        *,
        quota: str = "",
        limit: float | None = None,
        retry_after_s: float = 1.0,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code or "QUOTA_EXCEEDED")
        self.quota = quota
        self.limit = limit
        self.retry_after_s = retry_after_s


# --- tasks --------------------------------------------------------------------------------


class TaskPending(TaskfabricError):
    """The task has not finished yet; `reason` is its current state."""

    def __init__(self, task_id: object, reason: str) -> None:
        super().__init__(f"task {task_id} is pending ({reason})")
        self.task_id = task_id
        self.reason = reason


class ErrorCode(enum.StrEnum):
    """Why a task failed, as carried in the wire protocol."""

    TASK_FAILED = "TASK_FAILED"  # the function raised
    WORKER_LOST = "WORKER_LOST"
    MANAGER_LOST = "MANAGER_LOST"
    WALLTIME_EXCEEDED = "WALLTIME_EXCEEDED"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"
    DESERIALIZATION_FAILED = "DESERIALIZATION_FAILED"
    DEAD_LETTERED = "DEAD_LETTERED"
    ENDPOINT_DELETED = "ENDPOINT_DELETED"
    TASK_QUEUE_LOST = "TASK_QUEUE_LOST"
    #: cancelled by its owner; also how a manager or agent answers a task it dropped or stopped
    TASK_CANCELLED = "TASK_CANCELLED"
    #: an administrator deleted (or disabled) the task's owner before the task ran
    USER_DELETED = "USER_DELETED"
    USER_DISABLED = "USER_DISABLED"
    #: the endpoint's agent refused a function its allow-list does not name (it never ran)
    FUNCTION_NOT_ALLOWED = "FUNCTION_NOT_ALLOWED"
    #: the worker lacks the package that decodes the task's payload format (a task submitted with
    #: the Globus Compute SDK needs taskfabric[globus-compute] where the workers run); it never ran
    PAYLOAD_FORMAT_UNSUPPORTED = "PAYLOAD_FORMAT_UNSUPPORTED"
    #: a multi-user endpoint refused the submitter before anything ran (see endpoint_agent/multi_user)
    IDENTITY_NOT_MAPPED = "IDENTITY_NOT_MAPPED"
    ACCOUNT_NOT_ALLOWED = "ACCOUNT_NOT_ALLOWED"
    USER_CONFIG_INVALID = "USER_CONFIG_INVALID"
    #: the forwarder found the stored result missing from its blob store or not matching its sha256
    RESULT_INTEGRITY = "RESULT_INTEGRITY"
    #: an argument passed by reference (`DataRef`) did not match its size and sha256 on the worker
    DATA_INTEGRITY = "DATA_INTEGRITY"
    #: the worker could not fetch an argument passed by reference (expired, refused, deleted, unreachable)
    DATA_UNAVAILABLE = "DATA_UNAVAILABLE"

    @property
    def is_system_failure(self) -> bool:
        """True when the failure is the fabric's, not the function's: such tasks may be retried."""
        return self in (ErrorCode.WORKER_LOST, ErrorCode.MANAGER_LOST)


class TaskFailed(TaskfabricError):
    """A task ended in error. `remote_traceback` is the worker-side traceback text;
    `exception_type` the qualified name of the remote exception's class, when there was one."""

    code: ErrorCode = ErrorCode.TASK_FAILED

    def __init__(
        self, message: str, *, remote_traceback: str = "", task_id: object = None, exception_type: str = ""
    ) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.task_id = task_id
        self.exception_type = exception_type

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text = f"{text}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return text

    @staticmethod
    def for_code(code: str) -> type[TaskFailed]:
        """The error class for a wire error code; unknown codes map to `TaskExecutionFailed`."""
        return _CLASS_BY_CODE.get(code, TaskExecutionFailed)


class TaskExecutionFailed(TaskFailed):
    code = ErrorCode.TASK_FAILED


class WorkerLost(TaskFailed):
    code = ErrorCode.WORKER_LOST


class ManagerLost(TaskFailed):
    code = ErrorCode.MANAGER_LOST


class WalltimeExceeded(TaskFailed):
    code = ErrorCode.WALLTIME_EXCEEDED


class ResultTooLarge(TaskFailed):
    code = ErrorCode.RESULT_TOO_LARGE


class DeserializationFailed(TaskFailed):
    code = ErrorCode.DESERIALIZATION_FAILED


class TaskDeadLettered(TaskFailed):
    code = ErrorCode.DEAD_LETTERED


class EndpointDeleted(TaskFailed):
    code = ErrorCode.ENDPOINT_DELETED


class TaskQueueLost(TaskFailed):
    code = ErrorCode.TASK_QUEUE_LOST


class TaskCancelled(TaskFailed):
    code = ErrorCode.TASK_CANCELLED


class UserDeleted(TaskFailed):
    code = ErrorCode.USER_DELETED


class UserDisabled(TaskFailed):
    code = ErrorCode.USER_DISABLED


class FunctionNotAllowed(TaskFailed):
    code = ErrorCode.FUNCTION_NOT_ALLOWED


class IdentityNotMapped(TaskFailed):
    """A multi-user endpoint's identity mapping gives no local account for the submitter."""

    code = ErrorCode.IDENTITY_NOT_MAPPED


class AccountNotAllowed(TaskFailed):
    """A multi-user endpoint mapped the submitter to root, a denied or a nonexistent account."""

    code = ErrorCode.ACCOUNT_NOT_ALLOWED


class UserConfigInvalid(TaskFailed):
    """The `user_endpoint_config` failed the endpoint's schema or template (the message names the field)."""

    code = ErrorCode.USER_CONFIG_INVALID


class ResultIntegrityError(TaskFailed):
    """The task ran, but its stored result is missing from the forwarder's blob store or does not
    match the sha256 digest recorded with it (the message names the task)."""

    code = ErrorCode.RESULT_INTEGRITY


class DataIntegrityError(TaskFailed):
    """An argument passed by reference did not match its recorded size and sha256 when the worker
    downloaded it (a tampered or corrupted blob); the function never ran."""

    code = ErrorCode.DATA_INTEGRITY


class DataUnavailable(TaskFailed):
    """The worker could not fetch an argument passed by reference: its reference expired, was
    refused, or the blob is gone; the function never ran."""

    code = ErrorCode.DATA_UNAVAILABLE


_CLASS_BY_CODE: dict[str, type[TaskFailed]] = {
    cls.code.value: cls
    for cls in (
        TaskExecutionFailed,
        WorkerLost,
        ManagerLost,
        WalltimeExceeded,
        ResultTooLarge,
        DeserializationFailed,
        TaskDeadLettered,
        EndpointDeleted,
        TaskQueueLost,
        TaskCancelled,
        UserDeleted,
        UserDisabled,
        FunctionNotAllowed,
        IdentityNotMapped,
        AccountNotAllowed,
        UserConfigInvalid,
        ResultIntegrityError,
        DataIntegrityError,
        DataUnavailable,
    )
}
