"""The records of the HTTP API and of the results stream (see docs/api.md).

What the forwarder answers over HTTP (JSON) and pushes on the results WebSocket (msgpack), as
frozen dataclasses: the forwarder renders them, the agent and the client parse them, and the
forwarder's OpenAPI document describes them (pydantic reads these classes and their attribute
docstrings; nothing here imports pydantic).

Two renderings of one record:

- JSON (`render(record)`): UUIDs as strings, binary values (pickled results and exceptions) as
  base64 strings, states as their values.
- msgpack (`render(record, binary=True)`): binary values stay bytes; with `binary_ids=True` UUIDs
  travel as 16-byte bin (a stream client that subscribes with binary ids).

`parse(cls, data)` (and `parse(cls, data, binary=True)`) turns a decoded body back into a record,
accepting UUIDs as strings or 16-byte bin, ignoring unknown keys (a newer service may add fields)
and raising `ProtocolError` naming the first missing or mistyped field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from taskfabric.errors import ProtocolError
from taskfabric.protocol.states import EndpointState, TaskStatus

__all__ = [
    "RESULT_NOT_AVAILABLE",
    "RESULT_SHA256_HEADER",
    "RESULT_WORKER_PYTHON_HEADER",
    "BrokerAccess",
    "EndpointActivity",
    "EndpointInfo",
    "EndpointRegistered",
    "GroupInfo",
    "GroupMember",
    "RecentFailure",
    "ResultFrame",
    "TaskDetails",
    "TaskErrorInfo",
    "TaskInfo",
    "parse",
    "render",
]

#: read by pydantic (FastAPI's OpenAPI document) only: field descriptions from attribute
#: docstrings, binary fields described as base64 strings
_OPENAPI = {"use_attribute_docstrings": True, "ser_json_bytes": "base64"}

_R = TypeVar("_R")

#: `GET /v1/tasks/{id}/result` answers the raw result bytes (`application/octet-stream`, streamed
#: from the forwarder's blob store for a large result) with their sha256 (hex) and the Python
#: version of the worker that produced them in these headers: the client checks the digest.
RESULT_SHA256_HEADER = "X-Taskfabric-Result-Sha256"
RESULT_WORKER_PYTHON_HEADER = "X-Taskfabric-Worker-Python"
#: its error code (409) for a task without a result: pending, failed or cancelled
RESULT_NOT_AVAILABLE = "RESULT_NOT_AVAILABLE"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAccess:
    """What an endpoint's agent needs to reach its queues (minted at each registration)."""

    __pydantic_config__ = _OPENAPI

    amqp_url: str
    """the broker URL with the endpoint's own user and password"""
    username: str
    task_queue: str
    result_queue: str
    results_exchange: str
    dead_letter_exchange: str
    control_queue: str | None = None
    """cancellations for the agent (consumed apart from the task queue; null from an old forwarder)"""
    tasks_exchange: str | None = None
    """where the agent hands back tasks it has not started on a graceful stop (null from an old forwarder)"""
    ca_certificate: str | None = None
    """PEM CA certificate the agent should trust for an amqps broker (the forwarder's
    endpoint_broker_ca_file); null: the system's trust store"""
    amqp_urls: list[str] | None = None
    """every member of the broker cluster, with the endpoint's user and password (amqp_url is the
    first); the agent connects to one and moves to the next when it fails. Null from an older
    forwarder (and an older agent reads amqp_url only)"""
    queue_type: str = "quorum"
    """the type of the endpoint's queues: "quorum" or "classic" (the agent then counts the task
    and control queues' redeliveries itself, up to delivery_limit)"""
    delivery_limit: int | None = None
    """returns of one message before it is dead-lettered (null from an old forwarder)"""

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """Every URL the agent may connect to: `amqp_urls`, else `amqp_url` alone."""
        return tuple(self.amqp_urls or (self.amqp_url,))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointRegistered:
    """The answer to `POST /v1/endpoints`."""

    __pydantic_config__ = _OPENAPI

    endpoint_id: uuid.UUID
    name: str
    broker: BrokerAccess
    status_period_s: float | None = None
    """how often the agent should report its status (null from an old forwarder)"""
    allowed_functions: tuple[uuid.UUID, ...] | None = None
    """the endpoint's allow-list after this registration (null: any function, or an old forwarder)"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointInfo:
    """An endpoint and its agent's last status report (`GET /v1/endpoints/{id}`)."""

    __pydantic_config__ = _OPENAPI

    endpoint_id: uuid.UUID
    name: str
    status: EndpointState
    """as last reported, or offline when the agent has been silent too long"""
    last_heartbeat_at: float | None
    managers: int
    workers: int
    idle_workers: int
    outstanding_tasks: int
    pending_blocks: int
    running_blocks: int
    hostname: str
    scaling: str
    """the agent's last scaling decision, in words (empty: none yet)"""
    display_name: str | None
    """the endpoint config's display_name, as registered"""
    status_reason: str = ""
    """why the endpoint is degraded (empty otherwise)"""
    created_at: float
    owner: str | None = None
    """the owner's username (endpoint sharing)"""
    role: str | None = None
    """the caller's role on it: owner, manage or submit (endpoint sharing)"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskDetails:
    """Where and when a task ran."""

    __pydantic_config__ = _OPENAPI

    worker_python: str
    client_python: str
    received_at: float | None
    started_at: float | None
    finished_at: float | None
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskErrorInfo:
    """Why a task failed (a cancelled task carries `TASK_CANCELLED`)."""

    __pydantic_config__ = _OPENAPI

    code: str
    message: str
    traceback: str
    exception_type: str
    exception: bytes | None
    """the pickled exception (base64 in JSON)"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TaskInfo:
    """A task, its state and its outcome (`GET /v1/tasks/{id}`, `POST /v1/tasks/batch`)."""

    __pydantic_config__ = _OPENAPI

    task_id: uuid.UUID
    status: TaskStatus
    endpoint_id: uuid.UUID
    function_id: uuid.UUID
    task_group_id: uuid.UUID | None = None
    created_at: float
    completed_at: float | None
    result: bytes | None = None
    """the pickled result, base64 (success only)"""
    error: TaskErrorInfo | None = None
    """failed or cancelled only"""
    details: TaskDetails
    stdout: str = ""
    """the task's captured stdout (the end of it), once finished"""
    stderr: str = ""
    """the task's captured stderr (the end of it), once finished"""
    result_size: int | None = None
    """a result left out of a batch answer (its bytes are at GET /v1/tasks/{id}/result): its size"""
    result_sha256: str | None = None
    """... and the sha256 (hex) those bytes must have"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResultFrame:
    """One result pushed on the results stream (in a `{"results": [...]}` frame)."""

    __pydantic_config__ = _OPENAPI

    task_id: uuid.UUID
    ok: bool
    value: bytes | None
    """the pickled result (ok only)"""
    error: TaskErrorInfo | None
    details: TaskDetails
    stdout: str = ""
    stderr: str = ""
    value_size: int | None = None
    """a result the worker uploaded (`value` is then null): its size in bytes; the client
    downloads it from `GET /v1/tasks/{id}/result`"""
    value_sha256: str | None = None
    """... and the sha256 (hex) the downloaded bytes must have"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointActivity:
    """Your tasks on one endpoint (an item of `GET /v1/activity`): the unfinished ones now, and
    the ones that finished within the window asked for."""

    __pydantic_config__ = _OPENAPI

    endpoint_id: uuid.UUID
    waiting: int
    """your tasks not started yet (in its queue or held by its agent)"""
    running: int
    """your tasks a worker has started"""
    completed: int
    """your tasks that ended with a result within the window"""
    failed: int
    """your tasks that ended in error within the window"""
    cancelled: int
    """your tasks cancelled within the window"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecentFailure:
    """One of your tasks that failed recently (an item of `GET /v1/activity`), newest first."""

    __pydantic_config__ = _OPENAPI

    task_id: uuid.UUID
    endpoint_id: uuid.UUID
    code: str
    """its error code (`TASK_FAILED`: the function raised; others: the fabric failed it)"""
    completed_at: float
    """when the failure was stored (seconds since the epoch, the forwarder's clock)"""


# --- sharing: groups (issue 13) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupInfo:
    """A group you belong to (an item of `GET /v1/groups`; `GET /v1/groups/{id}` adds `members`)."""

    __pydantic_config__ = _OPENAPI

    group_id: uuid.UUID
    name: str
    """unique among its owner's groups (not across owners: name a group by id to be sure)"""
    description: str
    owner_id: uuid.UUID
    owner: str
    """the owner's username"""
    role: str
    """your role in it: owner, manager or member"""
    member_count: int
    """how many members it has (its owner included)"""
    created_at: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupMember:
    """A member of a group (`GET /v1/groups/{id}`, `POST /v1/groups/{id}/members`)."""

    __pydantic_config__ = _OPENAPI

    user_id: uuid.UUID
    username: str
    role: str
    """owner, manager or member"""
    added_at: float
    added_by: uuid.UUID | None = None
    """who added them (the owner: themselves, at creation)"""


# --- rendering ----------------------------------------------------------------------------


def render(record: Any, *, binary: bool = False, binary_ids: bool = False) -> dict[str, Any]:
    """The body of `record`: JSON-ready, or msgpack-ready with `binary` (see the module docstring)."""
    return _renderer(record.__class__, binary, binary_ids)(record)


@functools.cache
def _renderer(cls: type, binary: bool, binary_ids: bool) -> Callable[[Any], dict[str, Any]]:
    """A function that renders `cls` records with these flags, generated once: one dict display,
    no loop over fields (the results stream renders a record per result)."""
    namespace: dict[str, Any] = {"_b64": _b64_text}
    hints = _hints(cls)
    items = []
    for index, (name, kind) in enumerate(_plan(cls)):
        convert = {
            "bytes": "v" if binary else "_b64(v)",
            "uuid": "v.bytes" if binary_ids else "str(v)",
            "uuids": "[x.bytes for x in v]" if binary_ids else "[str(x) for x in v]",
            "enum": "v.value",
            "record": f"_record{index}(v)",
            None: "v",
        }[kind]
        if kind == "record":
            namespace[f"_record{index}"] = _renderer(_record_class(hints[name]), binary, binary_ids)
        items.append(
            f"{name!r}: r.{name}" if kind is None else f"{name!r}: (None if (v := r.{name}) is None else {convert})"
        )
    source = "def render_record(r):\n    return {" + ", ".join(items) + "}\n"
    exec(compile(source, f"<render {cls.__name__}>", "exec"), namespace)
    renderer: Callable[[Any], dict[str, Any]] = namespace["render_record"]
    return renderer


def _b64_text(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _record_class(annotation: Any) -> type:
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    return typing.cast(type, options[0])


@functools.cache
def _plan(cls: Any) -> tuple[tuple[str, str | None], ...]:
    """(field name, how to render it: None for as-is) of a record class, in field order."""
    hints = _hints(cls)
    return tuple((field.name, _kind(hints[field.name])) for field in dataclasses.fields(cls))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(annotation: Any) -> str | None:
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    base = options[0]
    if base is bytes:
        return "bytes"
    if base is uuid.UUID:
        return "uuid"
    if typing.get_origin(base) is tuple and typing.get_args(base)[:1] == (uuid.UUID,):
        return "uuids"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "enum"
    if dataclasses.is_dataclass(base):
        return "record"
    return None


# --- parsing ------------------------------------------------------------------------------

#: a field's check-and-convert step: (value, binary) -> the value for the record; raises `_Mismatch`
_Field = Callable[[Any, bool], Any]


def parse(cls: type[_R], data: Any, *, binary: bool = False) -> _R:
    """`data` (a decoded JSON or msgpack body) as a `cls` record; raises `ProtocolError`."""
    try:
        fast: _R = _fast_parser(typing.cast(type, cls), binary)(data)
        return fast
    except Exception:  # anything unusual: the checking parser decides, and names the problem
        pass
    try:
        record: _R = _parse_record(cls, data, binary)
    except _Mismatch as exc:
        raise ProtocolError(f"{cls.__name__}{exc.where}: expected {exc.expected}, got {exc.value!r:.80}") from None
    return record


@functools.cache
def _fast_parser(cls: type, binary: bool) -> Callable[[Any], Any]:
    """A parser for well-formed `cls` bodies, generated once: straight-line checks per field,
    raising on anything else (then `parse` runs the field-by-field parser, which names the
    problem). The client parses a record per result on the stream."""
    namespace: dict[str, Any] = {
        "_cls": cls,
        "_float": _parse_float,
        "_bytes": _parse_bytes,
        "_uuid": _parse_uuid,
        "_Mismatch": _Mismatch,
    }
    lines = ["def parse_record(d):", "    if type(d) is not dict: raise _Mismatch('an object', d)", "    kw = {}"]
    try:
        fields = [(name, required, *_optional(annotation)) for name, required, annotation in _fields(cls)]
        for *_, base in fields:
            _fast_check(base, "", binary)
    except TypeError:  # a field type without a fast check: the checking parser does it all
        return functools.partial(_parse_record, cls, binary=binary)
    for index, (name, required, optional, base) in enumerate(fields):
        indent = "    " if required else "        "
        if not required:
            lines.append(f"    if {name!r} in d:")
        lines.append(f"{indent}v = d[{name!r}]")
        check = _fast_check(base, f"_t{index}", binary)
        if isinstance(base, type) and (issubclass(base, enum.Enum) or dataclasses.is_dataclass(base)):
            namespace[f"_t{index}"] = base if issubclass(base, enum.Enum) else _fast_parser(base, binary)
        if optional:
            lines += [f"{indent}if v is not None:", f"{indent}    {check}"]
        else:
            lines.append(f"{indent}{check}")
        lines.append(f"{indent}kw[{name!r}] = v")
    lines.append("    return _cls(**kw)")
    exec(compile("\n".join(lines) + "\n", f"<parse {cls.__name__}>", "exec"), namespace)
    parser: Callable[[Any], Any] = namespace["parse_record"]
    return parser


def _fields(cls: type) -> list[tuple[str, bool, Any]]:
    hints = _hints(cls)
    return [
        (
            field.name,
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING,
            hints[field.name],
        )
        for field in dataclasses.fields(cls)
    ]


def _optional(annotation: Any) -> tuple[bool, Any]:
    """(whether None is allowed, the annotation without None)."""
    args = typing.get_args(annotation)
    options = [arg for arg in args if arg is not type(None)]
    if options and len(options) < len(args):
        return True, options[0]
    return False, annotation


def _fast_check(base: Any, helper: str, binary: bool) -> str:
    """One statement checking (and converting) `v` as a `base`, raising if it is not one."""
    if base in (str, int, bool):
        return f"if type(v) is not {base.__name__}: raise _Mismatch('', v)"
    if base is float:
        return "if type(v) is not float: v = _float(v, False)"
    if base is bytes:
        return f"v = _bytes(v, {binary})"
    if base is uuid.UUID:
        return "v = _uuid(v, False)"
    if isinstance(base, type) and (issubclass(base, enum.Enum) or dataclasses.is_dataclass(base)):
        return f"v = {helper}(v)"
    raise TypeError(f"no parser for {base!r}")


class _Mismatch(Exception):
    """A bad value; `where` grows (".details.attempts") as the error leaves nested records."""

    def __init__(self, expected: str, value: Any, where: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.where = where


def _parse_record(cls: type, data: Any, binary: bool) -> Any:
    if not isinstance(data, Mapping):
        raise _Mismatch("an object", data)
    values = {}
    for name, required, check in _parsers(cls):
        if name in data:
            try:
                values[name] = check(data[name], binary)
            except _Mismatch as exc:
                exc.where = f".{name}{exc.where}"
                raise
        elif required:
            raise _Mismatch("a value (the field is required)", None, f".{name}")
    return cls(**values)


@functools.cache
def _parsers(cls: type) -> tuple[tuple[str, bool, _Field], ...]:
    """(field name, required, its check) of a record class."""
    hints = _hints(cls)
    return tuple(
        (field.name, field.default is dataclasses.MISSING, _field_parser(hints[field.name]))
        for field in dataclasses.fields(cls)
    )


def _field_parser(annotation: Any) -> _Field:
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if options and len(options) < len(typing.get_args(annotation)):  # X | None
        inner = _field_parser(options[0])
        return lambda value, binary: None if value is None else inner(value, binary)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation)[:1] == (uuid.UUID,):
        return _parse_uuids
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        return _parse_strings
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return functools.partial(_parse_enum, annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return functools.partial(_parse_record, annotation)
    raise TypeError(f"no parser for {annotation!r}")


def _scalar(kind: type, words: str) -> _Field:
    def check(value: Any, binary: bool) -> Any:
        if type(value) is kind:
            return value
        raise _Mismatch(words, value)

    return check


def _parse_float(value: Any, binary: bool) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise _Mismatch("a number", value)


def _parse_bytes(value: Any, binary: bool) -> bytes:
    if binary and isinstance(value, bytes):
        return value
    if not binary and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _Mismatch("bytes" if binary else "a base64 string", value)


def _parse_uuid(value: Any, binary: bool) -> uuid.UUID:
    try:
        if isinstance(value, bytes) and len(value) == 16:
            return uuid.UUID(bytes=value)
        if isinstance(value, str):
            return uuid.UUID(value)
    except ValueError:
        pass
    raise _Mismatch("a UUID", value)


def _parse_uuids(value: Any, binary: bool) -> tuple[uuid.UUID, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Mismatch("a list of UUIDs", value)
    return tuple(_parse_uuid(item, binary) for item in value)


def _parse_strings(value: Any, binary: bool) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _Mismatch("a list of strings", value)
    return list(value)


def _parse_enum(kind: type[enum.Enum], value: Any, binary: bool) -> enum.Enum:
    try:
        return kind(value)
    except ValueError:
        raise _Mismatch(f"one of {', '.join(str(m.value) for m in kind)}", value) from None


_SCALARS: dict[Any, _Field] = {
    str: _scalar(str, "a string"),
    int: _scalar(int, "an integer"),
    bool: _scalar(bool, "true or false"),
    float: _parse_float,
    bytes: _parse_bytes,
    uuid.UUID: _parse_uuid,
}
