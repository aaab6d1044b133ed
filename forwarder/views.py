"""Store records as the API's records (`taskfabric.protocol.api`): what the routes and the results
stream render."""

from __future__ import annotations

import base64
import json
from typing import Any

from taskfabric.forwarder.records import EndpointRecord, EndpointState, FunctionRecord, TaskRecord, TaskStatus
from taskfabric.forwarder.store.groups import GroupMemberRecord, GroupRecord
from taskfabric.protocol.api import EndpointInfo, GroupInfo, GroupMember, TaskDetails, TaskErrorInfo, TaskInfo

__all__ = [
    "endpoint_info",
    "endpoint_state",
    "function_info",
    "group_info",
    "group_member",
    "task_details",
    "task_error",
    "task_info",
    "task_result_frame",
]


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode("ascii") if value is not None else None


def function_info(record: FunctionRecord, *, include_body: bool = False, owner: str = "") -> dict[str, Any]:
    """A function's metadata (`owner`: its owner's username), and its body when asked."""
    info: dict[str, Any] = {
        "function_id": str(record.function_id),
        "name": record.name,
        "content_hash": record.content_hash,
        "python_version": record.python_version,
        "size_bytes": record.size_bytes,
        "created_at": record.created_at,
        "description": record.description,
        "owner": owner,
        "public": record.public,
    }
    if include_body:
        info["body"] = _b64(record.body)
    return info


def endpoint_state(record: EndpointRecord, *, now: float, offline_after_s: float) -> EndpointState:
    """online/draining/degraded while the last report is fresh and said so; otherwise offline."""
    status = record.status
    if status.last_heartbeat_at is None or now - status.last_heartbeat_at > offline_after_s:
        return EndpointState.OFFLINE
    if status.state == EndpointState.DRAINING.value:
        return EndpointState.DRAINING
    if status.state == EndpointState.DEGRADED.value:
        return EndpointState.DEGRADED
    if status.state == EndpointState.ONLINE.value:
        return EndpointState.ONLINE
    return EndpointState.OFFLINE


def endpoint_info(record: EndpointRecord, *, now: float, offline_after_s: float) -> EndpointInfo:
    status = record.status
    return EndpointInfo(
        endpoint_id=record.endpoint_id,
        name=record.name,
        status=endpoint_state(record, now=now, offline_after_s=offline_after_s),
        last_heartbeat_at=status.last_heartbeat_at,
        managers=status.managers,
        workers=status.workers,
        idle_workers=status.idle_workers,
        outstanding_tasks=status.outstanding_tasks,
        pending_blocks=status.pending_blocks,
        running_blocks=status.running_blocks,
        hostname=status.hostname,
        scaling=status.scaling,
        display_name=_display_name(record),
        status_reason=status.status_reason,
        created_at=record.created_at,
    )


def _display_name(record: EndpointRecord) -> str | None:
    """The display name the agent registered with (its config's `display_name`), if any."""
    try:
        metadata = json.loads(record.metadata or "{}")
    except ValueError:
        return None
    name = metadata.get("display_name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def task_details(record: TaskRecord) -> TaskDetails:
    return TaskDetails(
        worker_python=record.worker_python,
        client_python=record.client_python,
        received_at=record.received_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        attempts=record.attempts,
    )


def task_error(record: TaskRecord) -> TaskErrorInfo | None:
    """The error of a failed or cancelled task (a cancelled one carries `TASK_CANCELLED`)."""
    if record.status is not TaskStatus.FAILED and record.status is not TaskStatus.CANCELLED:
        return None
    return TaskErrorInfo(
        code=record.error_code or "TASK_FAILED",
        message=record.error_message or "",
        traceback=record.error_traceback or "",
        exception_type=record.error_exception_type or "",
        exception=record.error_exception,
    )


def task_info(record: TaskRecord) -> TaskInfo:
    """The task info of GET /v1/tasks/{id} and POST /v1/tasks/batch (where a result kept in the
    blob store may be left out: `result` null, `result_size` and `result_sha256` name it)."""
    left_out = record.status is TaskStatus.SUCCESS and record.result is None and record.result_sha256 is not None
    return TaskInfo(
        task_id=record.task_id,
        status=record.status,
        endpoint_id=record.endpoint_id,
        function_id=record.function_id,
        task_group_id=record.task_group_id,
        created_at=record.created_at,
        completed_at=record.completed_at,
        result=None if left_out else (record.result or b"") if record.status is TaskStatus.SUCCESS else None,
        error=task_error(record),
        details=task_details(record),
        stdout=record.stdout or "",
        stderr=record.stderr or "",
        result_size=record.result_size if left_out else None,
        result_sha256=record.result_sha256 if left_out else None,
    )


def task_result_frame(record: TaskRecord, *, binary_id: bool = False) -> dict[str, Any]:
    """One result of the WebSocket stream, msgpack-ready (binary values stay bytes; the id as
    16-byte bin for a client that subscribes with binary ids): `render(ResultFrame(...),
    binary=True)`, written out because it runs for every result streamed (building the two
    frozen records first cost more than the rest of the delivery). A unit test holds the two equal."""
    ok = record.status is TaskStatus.SUCCESS
    error = None
    if not ok and (record.status is TaskStatus.FAILED or record.status is TaskStatus.CANCELLED):
        error = {
            "code": record.error_code or "TASK_FAILED",
            "message": record.error_message or "",
            "traceback": record.error_traceback or "",
            "exception_type": record.error_exception_type or "",
            "exception": record.error_exception,
        }
    # a result the worker uploaded travels by reference: the client downloads it (streamed) and
    # checks its sha256; the forwarder never reads it into memory for the stream
    uploaded = ok and record.result is None and record.result_sha256 is not None
    return {
        "task_id": record.task_id.bytes if binary_id else str(record.task_id),
        "ok": ok,
        "value": None if uploaded else (record.result or b"") if ok else None,
        "error": error,
        "details": {
            "worker_python": record.worker_python,
            "client_python": record.client_python,
            "received_at": record.received_at,
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "attempts": record.attempts,
        },
        "stdout": record.stdout or "",
        "stderr": record.stderr or "",
        "value_size": record.result_size if uploaded else None,
        "value_sha256": record.result_sha256 if uploaded else None,
    }


# --- sharing: groups ------------------------------------------------------------------------


def group_info(record: GroupRecord, *, role: str | None = None) -> GroupInfo:
    """A group as `GET /v1/groups` lists it, with the caller's `role` (default: the record's)."""
    return GroupInfo(
        group_id=record.group_id,
        name=record.name,
        description=record.description,
        owner_id=record.owner_id,
        owner=record.owner,
        role=role or (record.role.value if record.role is not None else ""),
        member_count=record.members,
        created_at=record.created_at,
    )


def group_member(record: GroupMemberRecord) -> GroupMember:
    return GroupMember(
        user_id=record.user_id,
        username=record.username,
        role=record.role.value,
        added_at=record.added_at,
        added_by=record.added_by,
    )
