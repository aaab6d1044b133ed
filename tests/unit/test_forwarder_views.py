"""The stream's result frame, written out for speed, is exactly the rendering of its record."""

from __future__ import annotations

import uuid

import pytest

from taskfabric.forwarder.records import TaskRecord, TaskStatus
from taskfabric.forwarder.views import task_details, task_error, task_result_frame
from taskfabric.protocol import ResultFrame, render


def _record(status: TaskStatus, **fields: object) -> TaskRecord:
    return TaskRecord(
        task_id=uuid.uuid4(),
        owner_id=uuid.uuid4(),
        endpoint_id=uuid.uuid4(),
        function_id=uuid.uuid4(),
        status=status,
        created_at=1.0,
        **fields,  # type: ignore[arg-type]
    )


RECORDS = [
    _record(TaskStatus.SUCCESS, result=b"\x80\x05N.", completed_at=2.0, received_at=1.5, attempts=1, stdout="out"),
    _record(TaskStatus.SUCCESS),  # no result bytes stored: an empty value
    # uploaded by the worker: a reference (size, sha256), no bytes
    _record(TaskStatus.SUCCESS, result_size=300_000_000, result_sha256="ab" * 32),
    _record(
        TaskStatus.FAILED,
        error_code="TASK_FAILED",
        error_message="ValueError: no",
        error_traceback="Traceback...",
        error_exception_type="builtins.ValueError",
        error_exception=b"pickled",
        stderr="err",
        worker_python="3.11.7",
        client_python="3.11.7",
    ),
    _record(TaskStatus.FAILED),  # no error fields stored
    _record(TaskStatus.CANCELLED, error_code="TASK_CANCELLED"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: record.status.value)
@pytest.mark.parametrize("binary_id", [False, True])
def test_the_stream_frame_is_the_rendered_record(record: TaskRecord, binary_id: bool) -> None:
    ok = record.status is TaskStatus.SUCCESS
    uploaded = ok and record.result_sha256 is not None
    expected = ResultFrame(
        task_id=record.task_id,
        ok=ok,
        value=None if uploaded else (record.result or b"") if ok else None,
        error=task_error(record),
        details=task_details(record),
        stdout=record.stdout or "",
        stderr=record.stderr or "",
        value_size=record.result_size if uploaded else None,
        value_sha256=record.result_sha256 if uploaded else None,
    )
    assert task_result_frame(record, binary_id=binary_id) == render(expected, binary=True, binary_ids=binary_id)
