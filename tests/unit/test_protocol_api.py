"""The HTTP and results-stream records: rendered as JSON or msgpack bodies and parsed back, with
a `ProtocolError` naming the first bad field; the client's stream hands them over typed."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import msgpack
import pytest

from taskfabric.client.stream import ResultStream
from taskfabric.protocol import (
    BrokerAccess,
    EndpointInfo,
    EndpointRegistered,
    EndpointState,
    ProtocolError,
    ResultFrame,
    TaskDetails,
    TaskErrorInfo,
    TaskInfo,
    TaskStatus,
    parse,
    render,
)

DETAILS = TaskDetails(
    worker_python="3.11.7", client_python="3.11.7", received_at=1.0, started_at=2.0, finished_at=3.0, attempts=1
)
ERROR = TaskErrorInfo(
    code="TASK_FAILED", message="boom", traceback="tb", exception_type="ValueError", exception=b"\x80"
)
RECORDS: list[Any] = [
    EndpointRegistered(
        endpoint_id=uuid.uuid4(),
        name="ep",
        broker=BrokerAccess(
            amqp_url="amqp://u:p@b:5672/%2F",
            username="ep-x",
            task_queue="t",
            result_queue="r",
            results_exchange="x",
            dead_letter_exchange="d",
            control_queue="c",
            tasks_exchange="tx",
        ),
        status_period_s=5.0,
    ),
    EndpointInfo(
        endpoint_id=uuid.uuid4(),
        name="ep",
        status=EndpointState.DEGRADED,
        last_heartbeat_at=None,
        managers=1,
        workers=4,
        idle_workers=2,
        outstanding_tasks=3,
        pending_blocks=0,
        running_blocks=1,
        hostname="h",
        scaling="",
        display_name=None,
        status_reason="disk full",
        created_at=1.5,
    ),
    TaskInfo(
        task_id=uuid.uuid4(),
        status=TaskStatus.FAILED,
        endpoint_id=uuid.uuid4(),
        function_id=uuid.uuid4(),
        created_at=1.0,
        completed_at=2.0,
        error=ERROR,
        details=DETAILS,
    ),
    ResultFrame(task_id=uuid.uuid4(), ok=True, value=b"\x00value", error=None, details=DETAILS, stdout="out"),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_a_record_survives_json(record: Any) -> None:
    body = json.loads(json.dumps(render(record)))
    assert parse(type(record), body) == record


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_a_record_survives_msgpack_with_binary_ids(record: Any) -> None:
    body = msgpack.unpackb(msgpack.packb(render(record, binary=True, binary_ids=True), use_bin_type=True))
    assert parse(type(record), body, binary=True) == record


def test_json_carries_states_ids_and_binary_as_text() -> None:
    info = render(RECORDS[2])
    assert info["status"] == "failed" and type(info["status"]) is str
    assert info["task_id"] == str(RECORDS[2].task_id)
    assert info["error"]["exception"] == "gA=="
    assert info["result"] is None


def test_unknown_keys_are_ignored_and_optional_ones_may_be_missing() -> None:
    body = render(RECORDS[0])
    body["added_by_a_newer_service"] = 1
    del body["broker"]["control_queue"], body["broker"]["tasks_exchange"], body["status_period_s"]
    registered = parse(EndpointRegistered, body)
    assert registered.broker.control_queue is None and registered.status_period_s is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint_id": "nope"}, "EndpointRegistered.endpoint_id: expected a UUID"),
        ({"broker": {"amqp_url": "a"}}, "EndpointRegistered.broker.username: expected a value"),
        ({"broker": None}, "EndpointRegistered.broker: expected an object"),
        ({"status_period_s": "5"}, "EndpointRegistered.status_period_s: expected a number"),
        ({"name": None}, "EndpointRegistered.name: expected a string"),
    ],
)
def test_a_bad_field_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parse(EndpointRegistered, {**render(RECORDS[0]), **change})


def test_states_must_be_known_and_base64_valid() -> None:
    with pytest.raises(ProtocolError, match=r"EndpointInfo\.status: expected one of online"):
        parse(EndpointInfo, {**render(RECORDS[1]), "status": "asleep"})
    with pytest.raises(ProtocolError, match=r"ResultFrame\.value: expected a base64 string"):
        parse(ResultFrame, {**render(RECORDS[3]), "value": "%%"})


def test_the_client_stream_hands_over_typed_results_and_unknown_ids() -> None:
    results: list[ResultFrame] = []
    unknown: list[set[uuid.UUID]] = []
    stream = ResultStream("http://forwarder", "token", results.extend, on_unknown=unknown.append)
    frame = RECORDS[3]
    missing = uuid.uuid4()
    stream.subscribe([frame.task_id, missing])
    stream._deliver({"results": [render(frame, binary=True, binary_ids=True)]})
    stream._deliver({"unknown": [str(missing)]})
    assert results == [frame]
    assert unknown == [{missing}]
    assert not stream._wanted
    with pytest.raises(ProtocolError, match=r"ResultFrame\.ok"):
        stream._deliver({"results": [{**render(frame, binary=True), "ok": "yes"}]})


@pytest.mark.parametrize("record", RECORDS, ids=lambda record: type(record).__name__)
def test_the_generated_parser_agrees_with_the_checking_one(record: Any) -> None:
    """`parse` tries a parser generated per class first; the field-by-field one must agree."""
    from taskfabric.protocol.api import _fast_parser, _parse_record

    for binary in (False, True):
        body = render(record, binary=binary, binary_ids=binary)
        assert _fast_parser(type(record), binary)(body) == _parse_record(type(record), body, binary) == record
