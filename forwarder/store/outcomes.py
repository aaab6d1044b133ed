"""How a task ended, before and after it is known to be still waiting: shared by the portable,
SQLite and PostgreSQL ways of finishing tasks in batches."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from taskfabric.errors import ErrorCode
from taskfabric.forwarder.blobs import BlobRef
from taskfabric.forwarder.records import TaskRecord, TaskStatus
from taskfabric.forwarder.store._sql import clean_text
from taskfabric.protocol import Result

__all__ = ["OUTCOME_FIELDS", "Failure", "Outcome", "finished", "outcome_of_failure", "outcome_of_result"]

_MESSAGE_LIMIT = 64 * 1024
_TRACEBACK_LIMIT = 1024 * 1024
_SHORT_LIMIT = 256
#: the most characters of each output stream stored (the end is kept: endpoints cut it already)
_OUTPUT_LIMIT = 1024 * 1024
_ATTEMPTS_MAX = 2**31 - 1


class Failure:
    """A failure the forwarder records itself (not one reported by a worker)."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


@dataclasses.dataclass(slots=True)  # one per result: not frozen, it is cheaper to create
class Outcome:
    """How a task ended, claimed by `endpoint_id`; untrusted text already made storable."""

    endpoint_id: uuid.UUID
    status: TaskStatus
    completed_at: float
    result: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    error_exception_type: str | None = None
    error_exception: bytes | None = None
    worker_python: str = ""
    received_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    stdout: str | None = None
    stderr: str | None = None
    #: a result the worker uploaded (its receipt checked at ingest): the row keeps this reference
    blob: BlobRef | None = None


#: the outcome's columns, in the order of `Outcome`'s fields (`blob` goes to its own columns)
OUTCOME_FIELDS = [field.name for field in dataclasses.fields(Outcome) if field.name != "blob"]


def outcome_of_result(endpoint_id: uuid.UUID, result: Result, now: float) -> Outcome:
    common: dict[str, Any] = {
        "endpoint_id": endpoint_id,
        "completed_at": now,
        "worker_python": clean_text(result.worker_python, _SHORT_LIMIT),
        "received_at": result.received_at,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "attempts": max(0, min(_ATTEMPTS_MAX, result.attempts)),
        "stdout": _output(result.stdout),
        "stderr": _output(result.stderr),
    }
    error = result.error
    if result.ok or error is None:
        uploaded = result.value_blob
        if uploaded is not None and result.value is None:
            blob = BlobRef(name=uploaded.name, size=uploaded.size, sha256=uploaded.sha256)
            return Outcome(status=TaskStatus.SUCCESS, result=None, blob=blob, **common)
        return Outcome(status=TaskStatus.SUCCESS, result=result.value or b"", **common)
    code = clean_text(error.code, 64) or "TASK_FAILED"
    return Outcome(
        # an endpoint answers TASK_CANCELLED only for a task it was told to cancel: normally the
        # row is cancelled already and this is ignored; if the store missed it, it ends cancelled
        status=TaskStatus.CANCELLED if code == ErrorCode.TASK_CANCELLED else TaskStatus.FAILED,
        error_code=code,
        error_message=clean_text(error.message, _MESSAGE_LIMIT),
        error_traceback=clean_text(error.traceback, _TRACEBACK_LIMIT),
        error_exception_type=clean_text(error.exception_type, _SHORT_LIMIT),
        error_exception=error.exception,
        **common,
    )


def _output(text: str) -> str | None:
    """The end of an output stream, storable; None when there was none."""
    return clean_text(text[-_OUTPUT_LIMIT:], _OUTPUT_LIMIT) or None if text else None


def outcome_of_failure(endpoint_id: uuid.UUID, failure: Failure, now: float) -> Outcome:
    return Outcome(
        endpoint_id=endpoint_id,
        status=TaskStatus.FAILED,
        completed_at=now,
        error_code=failure.code,
        error_message=failure.message,
        error_traceback="",
        error_exception_type="",
    )


def finished(
    task_id: uuid.UUID,
    outcome: Outcome,
    *,
    owner_id: uuid.UUID,
    function_id: uuid.UUID,
    created_at: float,
    client_python: str,
    task_group_id: uuid.UUID | None = None,
) -> TaskRecord:
    """The finished task: its identity columns plus the outcome."""
    return TaskRecord(
        task_id=task_id,
        owner_id=owner_id,
        endpoint_id=outcome.endpoint_id,
        function_id=function_id,
        created_at=created_at,
        client_python=client_python or "",
        task_group_id=task_group_id,
        status=outcome.status,
        completed_at=outcome.completed_at,
        result=outcome.result,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        error_traceback=outcome.error_traceback,
        error_exception_type=outcome.error_exception_type,
        error_exception=outcome.error_exception,
        worker_python=outcome.worker_python,
        received_at=outcome.received_at,
        started_at=outcome.started_at,
        finished_at=outcome.finished_at,
        attempts=outcome.attempts,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
    )
