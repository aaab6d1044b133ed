"""Parsing the SDK's request bodies into the native model, and native records into the SDK's
shapes. Plain functions: no HTTP, no store. Every problem raises `InvalidRequest` (400) or
`PayloadTooLarge` (413) naming the field."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from typing import Any

from taskfabric.forwarder.records import TaskRecord
from taskfabric.forwarder.requests import (
    SubmitLimits,
    SubmitRequest,
    SubmittedTask,
    check_python_version,
    check_text,
    invalid,
    parse_uuid,
    too_large,
)
from taskfabric.protocol import TaskStatus, check_resource_specification
from taskfabric.protocol.globus_compute import GLOBUS_COMPUTE_BODY_PREFIX, ComputeOutcome

__all__ = [
    "ComputeSubmit",
    "FunctionRegistration",
    "compute_outcome",
    "compute_status",
    "parse_function_registration",
    "parse_json_object",
    "parse_submit",
]

#: native state -> the Globus Compute state the SDK reads (anything but success/failed is pending)
_STATES = {
    TaskStatus.WAITING: "waiting-for-ep",
    TaskStatus.RUNNING: "running",
    TaskStatus.SUCCESS: "success",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}
_PY_VERSION = re.compile(r"\d+\.\d+(\.\d+)?")


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object (400 naming `what` otherwise)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"{what}: the body is not JSON ({exc})") from None
    except RecursionError:
        raise invalid(f"{what}: the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid(f"{what}: the body must be a JSON object")
    return body


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionRegistration:
    name: str
    body: bytes  # marked Globus-Compute-format
    python_version: str
    description: str | None
    public: bool | None


def parse_function_registration(body: dict[str, Any], *, max_function_bytes: int) -> FunctionRegistration:
    """`POST /v3/functions`: the SDK's serialized function, marked with its payload format."""
    code = body.get("function_code")
    if not isinstance(code, str) or not code:
        raise invalid("function_code: must be a non-empty string (the SDK's serialized function)")
    if len(code) > max_function_bytes:
        raise too_large("function_code", len(code), max_function_bytes, "max_function_bytes")
    if body.get("serialized", True) is not True:
        raise invalid("serialized: only serialized functions are supported")
    for unsupported in ("group", "ha_endpoint_id"):
        if body.get(unsupported) is not None:
            raise invalid(f"{unsupported}: not supported by taskfabric (share functions with `taskfabric function`)")
    name = body.get("function_name")
    if not isinstance(name, str):
        raise invalid("function_name: must be a string")
    meta = body.get("meta") or {}
    if not isinstance(meta, dict):
        raise invalid("meta: must be an object")
    python_version = _python_version(meta.get("python_version"), "meta.python_version")
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid("description: must be a string")
    public = body.get("public")
    if public is not None and not isinstance(public, bool):
        raise invalid("public: must be true or false")
    return FunctionRegistration(
        name=check_text(name or "function", "function_name", max_length=256),
        body=GLOBUS_COMPUTE_BODY_PREFIX + code.encode(),
        python_version=python_version,
        description=None if description is None else check_text(description, "description", max_length=4096),
        public=public,
    )


def _python_version(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(f"{field}: must be a string")
    return check_python_version(value, field)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ComputeSubmit:
    """A parsed `POST /v3/endpoints/{id}/submit`: the native request, the function of each task
    in request order, and whether the SDK asked for a result queue."""

    request: SubmitRequest
    function_order: list[uuid.UUID]
    create_queue: bool
    task_group_id: uuid.UUID


def parse_submit(body: dict[str, Any], limits: SubmitLimits) -> ComputeSubmit:
    """The SDK's batch: `{"tasks": {function_id: [payload, ...]}, "task_group_id"?, "create_queue"?,
    "resource_specification"?, "user_runtime"?, ...}`."""
    tasks = body.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise invalid("tasks: must be a non-empty object of function id -> list of payloads")
    group = body.get("task_group_id")
    task_group_id = uuid.uuid4() if group is None else parse_uuid(group, "task_group_id")
    create_queue = body.get("create_queue", False)
    if not isinstance(create_queue, bool):
        raise invalid("create_queue: must be true or false")
    if body.get("user_endpoint_config"):
        raise invalid("user_endpoint_config: multi-user endpoint templates are not supported by taskfabric")
    spec = body.get("resource_specification") or None
    try:
        resources = check_resource_specification(spec) if spec is not None else None
    except ValueError as exc:
        raise invalid(str(exc)) from None
    submitted: list[SubmittedTask] = []
    order: list[uuid.UUID] = []
    for raw_id, payloads in tasks.items():
        function_id = parse_uuid(raw_id, "tasks")
        if not isinstance(payloads, list):
            raise invalid(f"tasks[{raw_id}]: must be a list of payloads")
        for index, payload in enumerate(payloads):
            submitted.append(_task(function_id, payload, f"tasks[{raw_id}][{index}]", limits, resources))
            order.append(function_id)
    if len(submitted) > limits.max_tasks:
        raise invalid(f"tasks: {len(submitted)} tasks, above the limit of {limits.max_tasks} per request")
    request = SubmitRequest(tasks=submitted, client_python=_client_python(body), task_group_id=task_group_id)
    return ComputeSubmit(request=request, function_order=order, create_queue=create_queue, task_group_id=task_group_id)


def _task(
    function_id: uuid.UUID, payload: Any, field: str, limits: SubmitLimits, resources: dict[str, int] | None
) -> SubmittedTask:
    if not isinstance(payload, str):
        raise invalid(f"{field}: must be a string (the SDK's serialized arguments)")
    data = payload.encode()
    if len(data) > limits.max_payload_bytes:
        raise too_large(field, len(data), limits.max_payload_bytes, "max_payload_bytes")
    return SubmittedTask(function_id=function_id, payload=data, walltime_s=None, resource_specification=resources)


def _client_python(body: dict[str, Any]) -> str:
    runtime = body.get("user_runtime")
    version = runtime.get("python_version") if isinstance(runtime, dict) else None
    if isinstance(version, str) and (match := _PY_VERSION.match(version)):
        return match.group(0)
    return ""


def compute_status(status: TaskStatus) -> str:
    return _STATES.get(status, "received")


def compute_outcome(record: TaskRecord) -> ComputeOutcome | None:
    """A finished task's outcome as the SDK reads it (None while it is not finished). A success's
    result is the worker's ComputeSerializer string; a failure's data is its remote traceback (or
    the fabric's error message when the function never ran)."""
    if not record.status.terminal:
        return None
    if record.status is TaskStatus.SUCCESS:
        data = (record.result or b"").decode("utf-8", errors="replace")
        return ComputeOutcome(task_id=record.task_id, ok=True, data=data, completed_at=record.completed_at)
    message = record.error_message or record.error_code or "the task failed"
    text = record.error_traceback or f"{record.error_code or 'TASK_FAILED'}: {message}"
    return ComputeOutcome(
        task_id=record.task_id,
        ok=False,
        data=text,
        error_code=record.error_code or "TASK_FAILED",
        completed_at=record.completed_at,
    )
