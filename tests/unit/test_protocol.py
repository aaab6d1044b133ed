"""The wire protocol: round trips, strict decoding of untrusted bytes, and a fuzz test."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskfabric.errors import ErrorCode, ProtocolError
from taskfabric.protocol import (
    MAX_MANAGER_PREFETCH,
    MAX_MANAGER_WORKERS,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    CancelTasks,
    Drain,
    EndpointStatus,
    FunctionBody,
    Heartbeat,
    ManagerAccepted,
    ManagerRegister,
    Result,
    ResultBatch,
    StartUserEndpoint,
    Task,
    TaskBatch,
    TaskError,
    TaskEvents,
    TasksFinished,
    TaskStarted,
    pack,
    unpack,
    unpack_as,
)
from taskfabric.protocol.api import BrokerAccess

FN = uuid.uuid4()


def _task(**overrides: Any) -> Task:
    fields: dict[str, Any] = {"task_id": uuid.uuid4(), "function_id": FN, "payload": b"\x80\x05args"}
    fields.update(overrides)
    return Task(**fields)


EXAMPLES = [
    TaskBatch(
        tasks=[
            _task(),
            _task(walltime_s=2.5, submitted_at=time.time()),
            _task(task_group_id=uuid.uuid4(), user="alice", resource_specification={"num_cores": 2}),
        ],
        functions=[FunctionBody(function_id=FN, body=b"fn", python_version="3.11.7")],
        client_python="3.11.7",
    ),
    TaskBatch(tasks=[]),
    ResultBatch(
        results=[
            Result(
                task_id=uuid.uuid4(),
                ok=True,
                value=b"\x80\x05K\x01.",
                worker_python="3.11.7",
                received_at=1.0,
                started_at=2.0,
                finished_at=3.0,
                stdout="hello\n",
                stderr="",
            ),
            Result(
                task_id=uuid.uuid4(),
                ok=False,
                error=TaskError(
                    code=ErrorCode.WORKER_LOST,
                    message="died",
                    traceback="Traceback...",
                    exception_type="builtins.X",
                    exception=b"pickled",
                ),
                attempts=3,
            ),
        ]
    ),
    EndpointStatus(
        endpoint_id=uuid.uuid4(),
        sent_at=time.time(),
        state="online",
        heartbeat_period_s=5.0,
        managers=1,
        workers=4,
        idle_workers=2,
        outstanding_tasks=7,
        hostname="h",
    ),
    ManagerRegister(
        manager_id="abc", hostname="node1", workers=4, prefetch=2, python_version="3.11.7", block_id="7", pid=1234
    ),
    ManagerAccepted(heartbeat_period_s=2.0, heartbeat_threshold_s=10.0),
    Heartbeat(sent_at=time.time()),
    TaskEvents(started=[TaskStarted(task_id=uuid.uuid4(), started_at=time.time(), attempt=2)]),
    TaskEvents(),
    CancelTasks(task_ids=[uuid.uuid4(), uuid.uuid4()], grace_period_s=10.0),
    CancelTasks(task_ids=[]),
    TasksFinished(replica_id=uuid.uuid4(), task_ids=[uuid.uuid4(), uuid.uuid4()]),
    Drain(reason="walltime", deadline_s=30.0),
    Drain(),
    StartUserEndpoint(
        endpoint_id=uuid.uuid4(),
        parent_endpoint_id=uuid.uuid4(),
        user="alice",
        user_id=uuid.uuid4(),
        user_endpoint_config_json='{"account": "proj42"}',
        broker=BrokerAccess(
            amqp_url="amqp://ep-1:secret@localhost/",
            username="ep-1",
            task_queue="tasks.1",
            result_queue="results.1",
            results_exchange="results",
            dead_letter_exchange="dlx",
        ),
    ),
]


def test_every_message_type_has_a_round_trip_example() -> None:
    assert {type(example) for example in EXAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    data = pack(message)
    assert data[0] == PROTOCOL_VERSION
    assert unpack(data) == message
    assert unpack_as(data, type(message)) == message


def test_unpack_as_rejects_another_type() -> None:
    with pytest.raises(ProtocolError, match="expected a task_batch message, got heartbeat"):
        unpack_as(pack(Heartbeat(sent_at=1.0)), TaskBatch)


def _raw(tag: str, data: Any, version: int = PROTOCOL_VERSION) -> bytes:
    return bytes([version]) + msgpack.packb({"type": tag, "data": data}, use_bin_type=True)


def _task_map(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"task_id": uuid.uuid4().bytes, "function_id": FN.bytes, "payload": b"p"}
    fields.update(overrides)
    return fields


def test_unknown_fields_are_tolerated() -> None:
    raw = _raw("task_batch", {"tasks": [_task_map(priority=5)], "from_the_future": [1, 2]})
    decoded = unpack_as(raw, TaskBatch)
    assert len(decoded.tasks) == 1


def test_unknown_envelope_keys_are_tolerated() -> None:
    raw = bytes([1]) + msgpack.packb({"type": "heartbeat", "data": {"sent_at": 1.5}, "trace": "x"}, use_bin_type=True)
    assert unpack(raw) == Heartbeat(sent_at=1.5)


def test_ints_are_accepted_for_floats() -> None:
    assert unpack(_raw("heartbeat", {"sent_at": 7})) == Heartbeat(sent_at=7.0)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            _raw("task_batch", {"tasks": [_task_map(task_id="not-bytes")]}),
            r"task_batch.tasks\[0\].task_id: expected a UUID",
        ),
        (_raw("task_batch", {"tasks": [_task_map(task_id=b"short")]}), "UUID as 16 bytes"),
        (
            _raw("task_batch", {"tasks": [{"task_id": uuid.uuid4().bytes, "payload": b""}]}),
            "missing field 'function_id'",
        ),
        (_raw("task_batch", {}), "missing field 'tasks'"),
        (_raw("task_batch", {"tasks": "nope"}), "expected a list"),
        (_raw("task_batch", {"tasks": [_task_map(walltime_s=-1.0)]}), "walltime_s must be positive"),
        (_raw("task_batch", {"tasks": [_task_map(payload="text")]}), "expected bytes"),
        (_raw("heartbeat", {"sent_at": "now"}), "expected a number"),
        (_raw("heartbeat", {"sent_at": True}), "expected a number"),
        (_raw("manager_register", {"manager_id": "m", "hostname": "h", "workers": True}), "expected an integer"),
        (
            _raw("manager_register", {"manager_id": "m", "hostname": "h", "workers": 0}),
            "workers must be between 1 and 4096",
        ),
        (
            _raw("result_batch", {"results": [{"task_id": uuid.uuid4().bytes, "ok": True}]}),
            "an ok result needs a value",
        ),
        (
            _raw("result_batch", {"results": [{"task_id": uuid.uuid4().bytes, "ok": False}]}),
            "a failed result needs an error",
        ),
        (
            _raw("result_batch", {"results": [{"task_id": uuid.uuid4().bytes, "ok": 1, "value": b""}]}),
            "expected a boolean",
        ),
        (
            _raw(
                "endpoint_status",
                {"endpoint_id": uuid.uuid4().bytes, "sent_at": 1, "state": "asleep", "heartbeat_period_s": 1},
            ),
            "state must be one of",
        ),
        (_raw("no_such_type", {}), "unknown message type 'no_such_type'"),
        (_raw("heartbeat", {"sent_at": 1.0}, version=2), "unsupported protocol version 2"),
        (_raw("heartbeat", None), "expected a Heartbeat map"),
        (b"", "too short"),
        (b"\x01", "too short"),
        (b"\x01\xc1\xc1", "not a valid msgpack envelope"),
        (bytes([1]) + msgpack.packb([1, 2]), "the envelope is not a map"),
        (
            bytes([1]) + msgpack.packb({"type": "heartbeat", "data": {"sent_at": msgpack.ExtType(5, b"x")}}),
            "extension type 5",
        ),
        (
            bytes([1]) + msgpack.packb({"type": "heartbeat", "data": {"sent_at": 1.0}}) + b"trailing",
            "not a valid msgpack envelope",
        ),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack(raw)


def _registration(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {"manager_id": "m", "hostname": "h", "workers": 2}
    fields.update(overrides)
    return _raw("manager_register", fields)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"workers": 2**64 - 1}, r"manager_register: workers must be between 1 and 4096"),
        ({"workers": -1}, r"workers must be between 1 and 4096"),
        ({"workers": MAX_MANAGER_WORKERS + 1}, r"workers must be between 1 and 4096"),
        ({"workers": "2"}, r"manager_register.workers: expected an integer, got str"),
        ({"workers": 2.0}, r"manager_register.workers: expected an integer, got float"),
        ({"prefetch": 2**63}, r"prefetch must be between 0 and"),
        ({"prefetch": -5}, r"prefetch must be between 0 and"),
        ({"pid": -1}, r"pid must be between 0 and"),
        ({"pid": 2**40}, r"pid must be between 0 and"),
        ({"hostname": "h" * 1_000_000}, r"hostname must be at most 255 characters"),
        ({"registration_token": "t" * 256}, r"registration_token must be at most 255 characters"),
        ({"block_id": "b" * 300}, r"block_id must be at most 255 characters"),
        ({"manager_id": ["m"]}, r"manager_register.manager_id: expected a string, got list"),
    ],
)
def test_a_hostile_manager_registration_is_refused_naming_the_field(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack(_registration(**overrides))


def test_a_registration_at_the_limits_is_accepted_and_unknown_fields_are_ignored() -> None:
    message = unpack(
        _registration(workers=MAX_MANAGER_WORKERS, prefetch=MAX_MANAGER_PREFETCH, hostname="h" * 255, gpus=[1, 2])
    )
    assert isinstance(message, ManagerRegister)
    assert (message.workers, message.prefetch, len(message.hostname)) == (4096, MAX_MANAGER_PREFETCH, 255)


def test_pack_refuses_records_that_are_not_messages() -> None:
    with pytest.raises(TypeError, match="not a top-level protocol message"):
        pack(_task())  # type: ignore[arg-type]


def test_unpack_rejects_non_bytes() -> None:
    with pytest.raises(ProtocolError, match="expected bytes"):
        unpack("text")  # type: ignore[arg-type]


# --- fuzzing: any bytes either decode to a valid message or raise ProtocolError --------------

VALID_FRAMES = [pack(example) for example in EXAMPLES]


def _decodes_or_protocol_error(data: bytes) -> None:
    try:
        message = unpack(data)
    except ProtocolError:
        return
    # whatever decoded must be a valid message that survives a round trip
    assert type(message) in MESSAGE_TYPES.values()
    assert unpack(pack(message)) == message


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decodes_or_protocol_error(data)
    _decodes_or_protocol_error(bytes([PROTOCOL_VERSION]) + data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(min_value=0, max_value=max(0, len(frame) - 1)))
        if action == "flip" and frame:
            frame[position] = draw(st.integers(min_value=0, max_value=255))
        elif action == "insert":
            frame[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and frame:
            del frame[position]
        elif action == "truncate":
            del frame[position:]
    return bytes(frame)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated_frames())
def test_fuzz_mutated_valid_frames(data: bytes) -> None:
    _decodes_or_protocol_error(data)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(
        st.sampled_from(
            [
                "tasks",
                "results",
                "task_id",
                "ok",
                "value",
                "error",
                "sent_at",
                "state",
                "workers",
                "manager_id",
                "hostname",
                "endpoint_id",
                "heartbeat_period_s",
                "heartbeat_threshold_s",
                "functions",
                "reason",
                "x",
            ]
        ),
        _msgpack_values,
        max_size=6,
    ),
)
def test_fuzz_structured_garbage(tag: str, data: dict[str, Any]) -> None:
    _decodes_or_protocol_error(_raw(tag, data))
