"""Listing parameters and cursors, checked by hand (no HTTP, no database)."""

from __future__ import annotations

import uuid

import pytest

from taskfabric.errors import InvalidRequest
from taskfabric.forwarder.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    decode_cursor,
    encode_cursor,
    parse_task_query,
)
from taskfabric.forwarder.records import TaskStatus

OWNER = uuid.uuid4()


@pytest.mark.parametrize("created_at", [0.0, 1767225600.123456, 1e-9, 1767225600.1 + 1e-7])
def test_a_cursor_gives_back_exactly_its_key(created_at: float) -> None:
    task_id = uuid.uuid4()
    cursor = encode_cursor((created_at, task_id))
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor) == (created_at, task_id)


def test_defaults_list_everything_of_the_owner() -> None:
    query = parse_task_query(OWNER)
    assert query.owner_id == OWNER and query.limit == DEFAULT_LIMIT
    assert (query.status, query.endpoint_id, query.function_id, query.task_group_id) == (None, None, None, None)
    assert (query.since, query.after) == (None, None)


def test_every_parameter_is_parsed() -> None:
    endpoint, function, group, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), (12.5, uuid.uuid4())
    query = parse_task_query(
        OWNER,
        status="running",
        endpoint_id=str(endpoint),
        function_id=str(function),
        group_id=str(group),
        since="1767225600.5",
        limit=str(MAX_LIMIT),
        cursor=encode_cursor(key),
    )
    assert query.status is TaskStatus.RUNNING
    assert (query.endpoint_id, query.function_id, query.task_group_id) == (endpoint, function, group)
    assert (query.since, query.limit, query.after) == (1767225600.5, MAX_LIMIT, key)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("status", "done"),
        ("endpoint_id", "x"),
        ("group_id", "1" * 40),
        ("since", "inf"),
        ("since", "1e400"),
        ("limit", "1.5"),
        ("limit", "\u0661\u0660"),  # Arabic-Indic digits: decimal to Python, not to us
        ("limit", "99999999999"),
        ("cursor", "A" * 300),
        ("cursor", encode_cursor((1.0, uuid.uuid4()))[:-3]),
    ],
)
def test_bad_parameters_raise_invalid_request_naming_them(parameter: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_task_query(OWNER, **{parameter: value})
    assert str(caught.value).startswith(f"{parameter}:")
    assert caught.value.status == 400
