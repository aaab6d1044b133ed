"""Hand validation of submit bodies (msgpack and JSON): what passes, what is refused and how."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import hypothesis
import msgpack
import pytest
from hypothesis import strategies as st

from taskfabric.errors import InvalidRequest, PayloadTooLarge
from taskfabric.forwarder.requests import (
    SubmitLimits,
    check_text,
    decode_base64,
    parse_submit_json,
    parse_submit_msgpack,
    parse_task_ids,
)

LIMITS = SubmitLimits(max_tasks=5, max_payload_bytes=100)
F = str(uuid.uuid4())


def _packed(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def test_a_msgpack_batch_parses() -> None:
    body = {
        "tasks": [{"function_id": F, "payload": b"a"}, {"function_id": F, "payload": b"", "walltime_s": 2}],
        "client_python": "3.11.7",
        "future_field": "ignored",
    }
    parsed = parse_submit_msgpack(_packed(body), LIMITS)
    assert [(t.function_id, t.payload, t.walltime_s) for t in parsed.tasks] == [
        (uuid.UUID(F), b"a", None),
        (uuid.UUID(F), b"", 2.0),
    ]
    assert parsed.client_python == "3.11.7"
    assert parsed.function_ids == {uuid.UUID(F)}


def test_a_json_batch_parses_base64_payloads() -> None:
    body = {"tasks": [{"function_id": F, "payload": base64.b64encode(b"\x00\xff").decode(), "walltime_s": 1.5}]}
    parsed = parse_submit_json(json.dumps(body).encode(), LIMITS)
    assert parsed.tasks[0].payload == b"\x00\xff"
    assert parsed.tasks[0].walltime_s == 1.5
    assert parsed.client_python == ""


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a map"),
        ({}, "tasks: expected a list"),
        ({"tasks": []}, "the batch is empty"),
        ({"tasks": [1]}, r"tasks\[0\]: expected a map"),
        ({"tasks": [{"payload": b"x"}]}, r"tasks\[0\].function_id: expected a UUID"),
        ({"tasks": [{"function_id": "nope", "payload": b"x"}]}, "is not a valid UUID"),
        ({"tasks": [{"function_id": F, "payload": "text"}]}, r"tasks\[0\].payload: expected bytes"),
        ({"tasks": [{"function_id": F, "payload": b"x", "walltime_s": 0}]}, "positive number"),
        ({"tasks": [{"function_id": F, "payload": b"x", "walltime_s": True}]}, "positive number"),
        ({"tasks": [{"function_id": F, "payload": b"x", "walltime_s": float("nan")}]}, "positive number"),
        ({"tasks": [{"function_id": F, "payload": b"x"}], "client_python": 3}, "client_python"),
        ({"tasks": [{"function_id": F, "payload": b"x"}], "client_python": "3.11\n"}, "client_python"),
    ],
)
def test_malformed_msgpack_batches_are_400(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as refused:
        parse_submit_msgpack(_packed(body), LIMITS)
    assert refused.value.status == 400 and refused.value.code == "INVALID_REQUEST"


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xc1", b"\x92\x01", b"\xd4\x01\x02", b'{"tasks": [{"function_id": "x", "payload": "\\ud800"}]}'],
)
def test_undecodable_bodies_are_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_submit_msgpack(raw, LIMITS)
    with pytest.raises(InvalidRequest):
        parse_submit_json(raw, LIMITS)


def test_json_payloads_must_be_strict_base64() -> None:
    for payload in ("not base64!", "YQ", 5, None, "\ud800"):
        body = json.dumps({"tasks": [{"function_id": F, "payload": payload}]}).encode()
        with pytest.raises(InvalidRequest, match="payload"):
            parse_submit_json(body, LIMITS)


def test_limits_are_413_naming_the_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="above the limit of 100 bytes") as too_big:
        parse_submit_msgpack(_packed({"tasks": [{"function_id": F, "payload": b"x" * 101}]}), LIMITS)
    assert too_big.value.status == 413 and too_big.value.code == "PAYLOAD_TOO_LARGE"
    big_json = json.dumps({"tasks": [{"function_id": F, "payload": base64.b64encode(b"x" * 200).decode()}]})
    with pytest.raises(PayloadTooLarge, match="100 bytes"):
        parse_submit_json(big_json.encode(), LIMITS)
    with pytest.raises(PayloadTooLarge, match="max_batch_tasks"):
        parse_submit_msgpack(_packed({"tasks": [{"function_id": F, "payload": b"x"}] * 6}), LIMITS)
    # exactly at the limits is fine
    assert (
        len(parse_submit_msgpack(_packed({"tasks": [{"function_id": F, "payload": b"x" * 100}] * 5}), LIMITS).tasks)
        == 5
    )


def test_base64_size_is_checked_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_base64("A" * 10_000, "body", 100, "max_function_bytes")
    assert decode_base64("eA==", "body", 100, "max_function_bytes") == b"x"


def test_task_ids_are_split_into_valid_and_malformed() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    valid, bad = parse_task_ids([str(a), "junk", str(b), str(a)], limit=10)
    assert valid == [a, b]
    assert bad == ["junk"]
    with pytest.raises(PayloadTooLarge):
        parse_task_ids([str(a)] * 11, limit=10)


@pytest.mark.parametrize("text", ["", "a\x00b", "tab\there", "x" * 300, "lone \ud800 surrogate"])
def test_text_fields_refuse_control_characters_and_bad_unicode(text: str) -> None:
    with pytest.raises(InvalidRequest):
        check_text(text, "name", max_length=256)
    assert check_text("square ², ok \u00e9", "name", max_length=256) == "square ², ok \u00e9"


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    st.one_of(
        st.binary(max_size=200),
        _values.map(_packed),
        st.fixed_dictionaries(
            {
                "tasks": st.lists(
                    st.dictionaries(st.sampled_from(["function_id", "payload", "walltime_s"]), _values), max_size=6
                )
            }
        ).map(_packed),
    )
)
def test_any_bytes_give_a_request_or_a_400_or_413(raw: bytes) -> None:
    try:
        parsed = parse_submit_msgpack(raw, LIMITS)
    except (InvalidRequest, PayloadTooLarge):
        return
    assert 1 <= len(parsed.tasks) <= LIMITS.max_tasks
