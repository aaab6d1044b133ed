"""`Client`: the researcher's handle on a taskfabric service (one forwarder, one user).

from taskfabric.client import Client
client = Client()                                   # URL and token from env or `taskfabric login`
fid = client.register_function(square)
tid = client.run(7, endpoint_id=ep, function_id=fid)
client.get_result(tid)                              # raises TaskPending until it is done
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from taskfabric.client.config import ClientConfig
from taskfabric.client.http import ServiceHTTP
from taskfabric.client.serialization import (
    CLIENT_PYTHON,
    exception_from_error,
    serialize_arguments,
    serialize_function,
    value_from_result,
)
from taskfabric.errors import InvalidRequest, TaskPending
from taskfabric.ids import uuid_from_bytes
from taskfabric.protocol import TaskStatus, check_resource_specification

__all__ = ["Batch", "Client"]

#: tasks per submit request (the service accepts up to its max_batch_tasks, 10,000 by default)
SUBMIT_CHUNK = 2000


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    function_id: uuid.UUID
    payload: bytes
    walltime_s: float | None
    resource_specification: dict[str, int] | None = None


def checked_resource_specification(spec: Any) -> dict[str, int] | None:
    """A resource specification checked here, before any task is queued: `InvalidRequest`
    names the bad key or value (the service checks it again)."""
    try:
        return check_resource_specification(spec) or None
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="INVALID_REQUEST") from None


class Batch:
    """Many calls for one endpoint, sent in as few requests as possible (`Client.batch_run`)."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []

    def add(self, function_id: uuid.UUID | str, *args: Any, walltime_s: float | None = None, **kwargs: Any) -> None:
        self.calls.append(_Call(uuid.UUID(str(function_id)), serialize_arguments(args, kwargs), walltime_s))

    def __len__(self) -> int:
        return len(self.calls)


class Client:
    """Talks to one forwarder as one user. Thread-safe; close it (or use `with`) when done."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.config = ClientConfig.resolve(url, token)
        self._http = ServiceHTTP(self.config.url, self.config.token, timeout_s=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- service ------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get("/v1/version")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get("/v1/whoami")
        return result

    # --- functions ----------------------------------------------------------------------

    def register_function(
        self, fn: Callable[..., Any], *, name: str | None = None, by_value: bool = False
    ) -> uuid.UUID:
        """Register a function (idempotent: the same code gets the same id) and return its id.

        Functions from a notebook or `__main__` travel by value. Functions from an importable
        module travel by reference: that module must be installed where the endpoint's workers run,
        unless `by_value=True`, which ships the module's code along."""
        body = serialize_function(fn, by_value=by_value)
        answer = self._http.post(
            "/v1/functions",
            {
                "name": name or getattr(fn, "__qualname__", getattr(fn, "__name__", "function")),
                "body": base64.b64encode(body).decode(),
                "python_version": CLIENT_PYTHON,
            },
            idempotent=True,
        )
        return uuid.UUID(answer["function_id"])

    def get_function(self, function_id: uuid.UUID | str) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get(f"/v1/functions/{function_id}")
        return result

    def list_functions(self) -> list[dict[str, Any]]:
        return list(self._http.get("/v1/functions")["functions"])

    def delete_function(self, function_id: uuid.UUID | str) -> None:
        self._http.delete(f"/v1/functions/{function_id}")

    # --- endpoints ----------------------------------------------------------------------

    def list_endpoints(self) -> list[dict[str, Any]]:
        """Your endpoints, each with at least `id`, `name` and `status` (online/offline)."""
        return [_with_id(endpoint) for endpoint in self._http.get("/v1/endpoints")["endpoints"]]

    def get_endpoint(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]:
        return _with_id(self._http.get(f"/v1/endpoints/{endpoint_id}"))

    def get_endpoint_status(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]:
        return _with_id(self._http.get(f"/v1/endpoints/{endpoint_id}/status"))

    def register_endpoint(
        self, name: str, *, endpoint_id: uuid.UUID | str | None = None, metadata: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Register (or re-register) an endpoint; returns its id and broker credentials."""
        body: dict[str, Any] = {"name": name}
        if endpoint_id is not None:
            body["endpoint_id"] = str(endpoint_id)
        if metadata:
            body["metadata"] = metadata
        result: dict[str, Any] = self._http.post("/v1/endpoints", body, idempotent=True)
        return result

    def delete_endpoint(self, endpoint_id: uuid.UUID | str) -> None:
        self._http.delete(f"/v1/endpoints/{endpoint_id}")

    # --- tasks --------------------------------------------------------------------------

    def run(
        self,
        *args: Any,
        endpoint_id: uuid.UUID | str,
        function_id: uuid.UUID | str,
        walltime_s: float | None = None,
        **kwargs: Any,
    ) -> uuid.UUID:
        """Submit one call; returns its task id."""
        batch = Batch()
        batch.add(function_id, *args, walltime_s=walltime_s, **kwargs)
        return self.batch_run(endpoint_id, batch)[0]

    def create_batch(self) -> Batch:
        return Batch()

    def batch_run(self, endpoint_id: uuid.UUID | str, batch: Batch) -> list[uuid.UUID]:
        """Submit every call of `batch`; returns their task ids in order."""
        if not batch.calls:
            raise InvalidRequest("the batch is empty")
        task_ids: list[uuid.UUID] = []
        for start in range(0, len(batch.calls), SUBMIT_CHUNK):
            task_ids.extend(self.submit_calls(endpoint_id, batch.calls[start : start + SUBMIT_CHUNK]))
        return task_ids

    def submit_calls(self, endpoint_id: uuid.UUID | str, calls: Iterable[_Call]) -> list[uuid.UUID]:
        """One submit request (the Executor's fast path: msgpack, raw bytes)."""
        tasks = []
        for call in calls:
            entry: dict[str, Any] = {"function_id": str(call.function_id), "payload": call.payload}
            if call.walltime_s is not None:
                entry["walltime_s"] = float(call.walltime_s)
            if call.resource_specification:
                entry["resource_specification"] = call.resource_specification
            tasks.append(entry)
        answer = self._http.post_msgpack(
            f"/v1/endpoints/{endpoint_id}/tasks", {"tasks": tasks, "client_python": CLIENT_PYTHON}
        )
        return [uuid.UUID(str(task_id)) for task_id in answer["task_ids"]]

    def get_task(self, task_id: uuid.UUID | str) -> dict[str, Any]:
        """Status (`waiting`, `running`, `success`, `failed`, `cancelled`), timestamps and attempts
        (under `details`), captured `stdout` and `stderr`, and (when done) the encoded outcome."""
        result: dict[str, Any] = self._http.get(f"/v1/tasks/{task_id}")
        return result

    def get_result(self, task_id: uuid.UUID | str) -> Any:
        """The task's return value; raises `TaskPending` while it runs and the remote failure
        (the original exception type when it can be rebuilt here) when it failed."""
        return outcome_of(self.get_task(task_id))

    def get_batch_result(self, task_ids: Iterable[uuid.UUID | str]) -> dict[uuid.UUID, dict[str, Any]]:
        """For each task: `{"status", "pending": bool, "result"}` or `{"status", "pending",
        "exception"}` (the exception object, not raised). Unknown ids are left out."""
        ids = [str(task_id) for task_id in task_ids]
        out: dict[uuid.UUID, dict[str, Any]] = {}
        for start in range(0, len(ids), 10_000):
            answer = self._http.post("/v1/tasks/batch", {"task_ids": ids[start : start + 10_000]}, idempotent=True)
            for task_id, info in answer["tasks"].items():
                out[uuid.UUID(task_id)] = _summary(info)
        return out


def as_uuid(value: bytes | str) -> uuid.UUID:
    """A task id as the service sent it: 16-byte bin (msgpack) or a UUID string."""
    if type(value) is bytes and len(value) == 16:
        return uuid_from_bytes(value)
    return uuid.UUID(str(value))


def task_status(info: dict[str, Any]) -> TaskStatus | None:
    """The task's status; None for a state this client does not know (a newer service's)."""
    try:
        return TaskStatus(str(info.get("status")))
    except ValueError:
        return None


def is_pending(info: dict[str, Any]) -> bool:
    """True while the task may still change (waiting, running, or a state unknown here)."""
    status = task_status(info)
    return status is None or status.pending


def outcome_of(info: dict[str, Any]) -> Any:
    """The value of a finished task's info, raising its failure or `TaskPending`."""
    status = task_status(info)
    task_id = info.get("task_id")
    details = info.get("details") or {}
    if status is TaskStatus.SUCCESS:
        return value_from_result(
            base64.b64decode(info["result"]), worker_python=details.get("worker_python", ""), task_id=task_id
        )
    if status is TaskStatus.FAILED:
        error = dict(info.get("error") or {})
        if error.get("exception"):
            error["exception"] = base64.b64decode(error["exception"])
        raise exception_from_error(error, worker_python=details.get("worker_python", ""), task_id=task_id)
    raise TaskPending(task_id, str(info.get("status")))


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": info.get("status"), "pending": is_pending(info)}
    if not summary["pending"]:
        try:
            summary["result"] = outcome_of(info)
        except Exception as exc:
            summary["exception"] = exc
    return summary


def _with_id(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {**endpoint, "id": endpoint.get("endpoint_id", endpoint.get("id"))}
