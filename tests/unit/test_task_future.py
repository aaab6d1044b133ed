"""`TaskFuture.cancel` keeps the standard meaning; `cancel_remote` of a call not sent yet is a
local cancel (no service involved)."""

from __future__ import annotations

import uuid

from taskfabric.client import TaskCancelled, TaskFailed, TaskFuture
from taskfabric.client.serialization import exception_from_error
from taskfabric.errors import ErrorCode


def test_a_call_not_sent_yet_is_cancelled_locally() -> None:
    future = TaskFuture()
    assert future.cancel_remote() is True
    assert future.cancelled()
    assert future.set_running_or_notify_cancel() is False  # the submitter skips it


def test_a_sent_call_cannot_be_cancelled_the_standard_way() -> None:
    future = TaskFuture()
    assert future.set_running_or_notify_cancel() is True  # what the submitter does when it sends
    future.task_id = uuid.uuid4()
    assert future.cancel() is False


def test_a_cancelled_outcome_raises_task_cancelled() -> None:
    error = exception_from_error({"code": ErrorCode.TASK_CANCELLED.value, "message": "cancelled by its owner"})
    assert isinstance(error, TaskCancelled)
    assert isinstance(error, TaskFailed)
