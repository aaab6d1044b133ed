"""What one endpoint may send the shared store: the forwarder's own check of result sizes and of
results per broker message, applied at ingest (endpoints cut oversized results themselves, but an
endpoint is not trusted to: its agent may be old, misconfigured or hostile).

- A result whose value (or pickled exception) is larger than `quotas.max_result_bytes` is stored
  as a `RESULT_TOO_LARGE` error naming the size and the limit; the bytes are dropped. The other
  results of the same message are stored as they came.
- A message carrying more than `quotas.max_results_per_message` results is refused as a whole (not
  split: its size is the abuse), with a typed outcome for each task it names: `RESULT_TOO_LARGE`
  naming the count and the limit. The message is acknowledged like any other: the tasks have
  their outcome, and the agent forgets results the broker confirmed, so no task is left pending.
- A result naming a blob the worker uploaded (`Result.value_blob`) is stored as a reference only if
  its receipt is this forwarder's for that task, name, size and digest; otherwise it is stored as a
  `RESULT_INTEGRITY` error (an endpoint cannot make a task point at a blob it was not given).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence

from taskfabric.errors import ErrorCode
from taskfabric.forwarder.records import TaskRecord
from taskfabric.forwarder.result_uploads import ResultUploadSigner
from taskfabric.protocol import Result, TaskError

__all__ = ["ResultLimits", "result_bytes_by_owner"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResultLimits:
    """The ingest's limits (from `QuotaSettings`)."""

    max_result_bytes: int
    max_results_per_message: int
    #: checks the receipts of uploaded results (None: no result may name a blob)
    receipts: ResultUploadSigner | None = None

    def screen(self, results: Sequence[Result]) -> Sequence[Result]:
        """The results to store for one broker message (see the module docstring)."""
        if len(results) > self.max_results_per_message:
            return [self._refused(result.task_id, len(results)) for result in results]
        if all(_size(result) <= self.max_result_bytes and result.value_blob is None for result in results):
            return results  # the common case: no copy
        return [self._screened(result) for result in results]

    def _screened(self, result: Result) -> Result:
        if _size(result) > self.max_result_bytes:
            return self._oversized(result)
        blob = result.value_blob
        if blob is None:
            return result
        if self.receipts is not None and result.value is None and self.receipts.check_receipt(result.task_id, blob):
            return result
        return _with_times(
            Result(
                task_id=result.task_id,
                ok=False,
                error=TaskError(
                    code=ErrorCode.RESULT_INTEGRITY.value,
                    message=f"task {result.task_id}: the endpoint named an uploaded result blob without this "
                    "forwarder's valid receipt for it; the result was dropped at ingest",
                ),
            ),
            result,
        )

    def _refused(self, task_id: uuid.UUID, count: int) -> Result:
        return _error_result(
            task_id,
            f"the endpoint sent this task's result in one broker message with {count} results, above the "
            f"forwarder's limit of {self.max_results_per_message} (quotas.max_results_per_message): the message "
            "was refused and its results dropped",
        )

    def _oversized(self, result: Result) -> Result:
        return _with_times(
            _error_result(
                result.task_id,
                f"the task's result is {_size(result)} bytes, above the forwarder's limit of "
                f"{self.max_result_bytes} bytes (quotas.max_result_bytes): it was dropped at ingest",
            ),
            result,
        )


def _with_times(error: Result, result: Result) -> Result:
    return dataclasses.replace(
        error,
        worker_python=result.worker_python,
        received_at=result.received_at,
        started_at=result.started_at,
        finished_at=result.finished_at,
        attempts=result.attempts,
    )


def _size(result: Result) -> int:
    """The opaque bytes a result asks the store to keep (text fields are cut by the store)."""
    value = len(result.value) if result.value is not None else 0
    exception = len(result.error.exception) if result.error is not None and result.error.exception else 0
    return value + exception


def _error_result(task_id: uuid.UUID, message: str) -> Result:
    return Result(task_id=task_id, ok=False, error=TaskError(code=ErrorCode.RESULT_TOO_LARGE.value, message=message))


def result_bytes_by_owner(records: Iterable[TaskRecord]) -> dict[uuid.UUID, int]:
    """Bytes of stored results (values and pickled exceptions) per task owner, for the daily quota."""
    totals: dict[uuid.UUID, int] = {}
    for record in records:
        size = (record.result_bytes or 0) + len(record.error_exception or b"")
        if size:
            totals[record.owner_id] = totals.get(record.owner_id, 0) + size
    return totals
