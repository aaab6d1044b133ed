"""Validating request bodies by hand: the submit batch (JSON or msgpack) and small text fields.

The submit body is the hot path: it is decoded with `json`/`msgpack` and checked field by field
here, never through a pydantic model per task. Every problem raises `InvalidRequest` (400, code
`INVALID_REQUEST`, naming the field) or `PayloadTooLarge` (413, naming the limit in bytes).
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import math
import re
import uuid
from typing import Any

import msgpack

from taskfabric.errors import InvalidRequest, PayloadTooLarge
from taskfabric.ids import uuid_from_bytes
from taskfabric.protocol import check_resource_specification

__all__ = [
    "INVALID_REQUEST",
    "PAYLOAD_TOO_LARGE",
    "SubmitLimits",
    "SubmitRequest",
    "SubmittedTask",
    "check_python_version",
    "check_text",
    "decode_base64",
    "invalid",
    "parse_submit_json",
    "parse_submit_msgpack",
    "parse_task_ids",
    "parse_uuid",
    "too_large",
]

INVALID_REQUEST = "INVALID_REQUEST"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"

_VERSION_RE = re.compile(r"[0-9A-Za-z.+_-]{0,64}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True, slots=True)
class SubmitLimits:
    max_tasks: int
    max_payload_bytes: int


@dataclasses.dataclass(slots=True)  # one per task: not frozen, it is cheaper to create
class SubmittedTask:
    function_id: uuid.UUID
    payload: bytes
    walltime_s: float | None
    resource_specification: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SubmitRequest:
    tasks: list[SubmittedTask]
    client_python: str
    #: msgpack only: the client sent `"id_format": "binary"` and gets its task ids as 16-byte bin
    binary_ids: bool = False
    #: the client's idempotency key for this request: a retry with the same key never makes
    #: second tasks (see `taskfabric.forwarder.tasks`)
    submission_id: uuid.UUID | None = None
    #: the task group every task of the request joins (an Executor's), if any
    task_group_id: uuid.UUID | None = None
    #: for a multi-user endpoint: the variables its user config template is rendered with (a
    #: JSON object; validated by the endpoint against its schema, see endpoint_agent/multi_user)
    user_endpoint_config: dict[str, Any] | None = None

    @property
    def function_ids(self) -> set[uuid.UUID]:
        return {task.function_id for task in self.tasks}


def invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, code=INVALID_REQUEST)


def too_large(what: str, size: int, limit: int, setting: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what} is {size} bytes, above the limit of {limit} bytes ({setting})", code=PAYLOAD_TOO_LARGE
    )


# --- submit bodies ------------------------------------------------------------------------


def parse_submit_msgpack(body: bytes, limits: SubmitLimits) -> SubmitRequest:
    """A msgpack submit body: binary values are raw bytes, ids are strings."""
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except Exception as exc:  # msgpack raises many types on garbage: all mean "not msgpack"
        raise invalid(f"the body is not valid msgpack ({type(exc).__name__})") from None
    return _parse_submit(data, limits, binary=True)


def parse_submit_json(body: bytes, limits: SubmitLimits) -> SubmitRequest:
    """A JSON submit body: binary values are base64 strings."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the body is not valid JSON ({type(exc).__name__})") from None
    return _parse_submit(data, limits, binary=False)


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError("msgpack extension types are not accepted")


def _parse_submit(data: Any, limits: SubmitLimits, *, binary: bool) -> SubmitRequest:
    if type(data) is not dict:
        raise invalid("the body must be a map with a 'tasks' list")
    raw_tasks = data.get("tasks")
    if type(raw_tasks) is not list:
        raise invalid("tasks: expected a list of tasks")
    if not raw_tasks:
        raise invalid("tasks: the batch is empty")
    if len(raw_tasks) > limits.max_tasks:
        raise PayloadTooLarge(
            f"the batch has {len(raw_tasks)} tasks, above the limit of {limits.max_tasks} tasks (max_batch_tasks)",
            code=PAYLOAD_TOO_LARGE,
        )
    client_python = data.get("client_python", "")
    if client_python is None:
        client_python = ""
    if type(client_python) is not str or not _VERSION_RE.fullmatch(client_python):
        raise invalid("client_python: expected a Python version string such as '3.11.7'")
    id_format = data.get("id_format", "text")
    if id_format not in ("text", "binary") or (id_format == "binary" and not binary):
        raise invalid("id_format: expected 'text', or 'binary' (msgpack bodies only)")
    task_group_id = _optional_uuid(data.get("task_group_id"), binary, "task_group_id")
    function_ids: dict[str | bytes, uuid.UUID] = {}
    tasks = [_parse_task(raw, index, limits, binary, function_ids) for index, raw in enumerate(raw_tasks)]
    return SubmitRequest(
        tasks=tasks,
        client_python=client_python,
        binary_ids=id_format == "binary",
        submission_id=_optional_uuid(data.get("submission_id"), binary, "submission_id"),
        task_group_id=task_group_id,
        user_endpoint_config=_user_endpoint_config(data.get("user_endpoint_config")),
    )


#: the largest `user_endpoint_config`, as compact JSON
MAX_USER_ENDPOINT_CONFIG_BYTES = 16 * 1024
#: its deepest nesting of maps and lists (the endpoint walks it recursively: schema, control characters)
MAX_USER_ENDPOINT_CONFIG_DEPTH = 16


def _user_endpoint_config(value: Any) -> dict[str, Any] | None:
    """An optional JSON object of template variables (string keys, JSON values, bounded size)."""
    if value is None:
        return None
    if type(value) is not dict:
        raise invalid("user_endpoint_config: expected a map of variable names to JSON values")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise invalid(
            "user_endpoint_config: expected JSON values only (strings, numbers, booleans, lists, maps)"
        ) from None
    if size > MAX_USER_ENDPOINT_CONFIG_BYTES:
        raise too_large("user_endpoint_config", size, MAX_USER_ENDPOINT_CONFIG_BYTES, "MAX_USER_ENDPOINT_CONFIG_BYTES")
    if _depth(value) > MAX_USER_ENDPOINT_CONFIG_DEPTH:
        raise invalid(f"user_endpoint_config: nested more than {MAX_USER_ENDPOINT_CONFIG_DEPTH} maps or lists deep")
    return value


def _depth(value: Any) -> int:
    """How deeply maps and lists nest in `value` (without recursion: it may be deep)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in children)
    return deepest


def _optional_uuid(value: Any, binary: bool, field: str) -> uuid.UUID | None:
    """An optional request-wide id: a UUID string (or 16-byte bin in msgpack)."""
    if value is None:
        return None
    if binary and type(value) is bytes and len(value) == 16:
        return uuid_from_bytes(value)
    return parse_uuid(value, field)


def _parse_task(
    raw: Any, index: int, limits: SubmitLimits, binary: bool, function_ids: dict[str | bytes, uuid.UUID]
) -> SubmittedTask:
    if type(raw) is not dict:
        raise invalid(f"tasks[{index}]: expected a map")
    raw_id: Any = raw.get("function_id")
    function_id = function_ids.get(raw_id) if type(raw_id) in (str, bytes) else None
    if function_id is None:  # most batches call one function: parse its id once
        if binary and type(raw_id) is bytes and len(raw_id) == 16:
            function_id = uuid_from_bytes(raw_id)
        else:
            function_id = parse_uuid(raw_id, f"tasks[{index}].function_id")
        function_ids[raw_id] = function_id
    payload = raw.get("payload")
    if binary:
        if type(payload) is not bytes:
            raise invalid(f"tasks[{index}].payload: expected bytes")
    else:
        payload = decode_base64(payload, f"tasks[{index}].payload", limits.max_payload_bytes, "max_payload_bytes")
    if len(payload) > limits.max_payload_bytes:
        raise too_large(f"tasks[{index}].payload", len(payload), limits.max_payload_bytes, "max_payload_bytes")
    walltime = raw.get("walltime_s")
    if walltime is not None:
        kind = type(walltime)
        if (kind is not float and kind is not int) or not math.isfinite(walltime) or walltime <= 0:
            raise invalid(f"tasks[{index}].walltime_s: expected a positive number of seconds")
        walltime = float(walltime)
    resources = raw.get("resource_specification")
    if resources is not None:
        try:
            resources = check_resource_specification(resources, field=f"tasks[{index}].resource_specification")
        except ValueError as exc:
            raise invalid(str(exc)) from None
    return SubmittedTask(
        function_id=function_id, payload=payload, walltime_s=walltime, resource_specification=resources or None
    )


# --- small fields -------------------------------------------------------------------------


def parse_uuid(value: Any, field: str) -> uuid.UUID:
    """A UUID from its string form, or `InvalidRequest` naming `field`."""
    if type(value) is not str or len(value) > 64:
        raise invalid(f"{field}: expected a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid(f"{field}: {value[:64]!r} is not a valid UUID") from None


def parse_task_ids(values: list[str], *, limit: int) -> tuple[list[uuid.UUID], list[str]]:
    """(valid ids in order, without repeats; the strings that are not UUIDs)."""
    if len(values) > limit:
        raise PayloadTooLarge(f"{len(values)} task ids asked for, above the limit of {limit}", code=PAYLOAD_TOO_LARGE)
    valid: dict[uuid.UUID, None] = {}
    bad: list[str] = []
    for value in values:
        try:
            valid[uuid.UUID(value)] = None
        except (ValueError, TypeError, AttributeError):
            bad.append(value if isinstance(value, str) else repr(value))
    return list(valid), bad


def decode_base64(value: Any, field: str, limit: int, setting: str) -> bytes:
    """Strict base64 (standard alphabet, padded); checks the size before decoding."""
    if type(value) is not str:
        raise invalid(f"{field}: expected a base64 string")
    estimated = len(value) * 3 // 4
    if estimated > limit + 2:
        raise too_large(field, estimated, limit, setting)
    try:
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError, binascii.Error):
        raise invalid(f"{field}: not valid base64") from None


def check_text(value: str, field: str, *, max_length: int, allow_empty: bool = False) -> str:
    """Printable text of at most `max_length` characters (no control characters, valid UTF-8)."""
    if not value and not allow_empty:
        raise invalid(f"{field}: must not be empty")
    if len(value) > max_length:
        raise invalid(f"{field}: at most {max_length} characters")
    if _CONTROL_RE.search(value):
        raise invalid(f"{field}: control characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{field}: not valid Unicode text") from None
    return value


def check_python_version(value: str, field: str) -> str:
    if not _VERSION_RE.fullmatch(value):
        raise invalid(f"{field}: expected a Python version string such as '3.11.7'")
    return value
