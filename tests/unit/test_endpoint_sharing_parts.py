"""The plain parts of endpoint sharing: parsing the audit listing's and the task listing's new
parameters, the CLI's words for an access document, and how the client edits one grant of a
document (no network)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from taskfabric.client.client import _grant_request, _names
from taskfabric.endpoint_agent.cli_endpoint import access_lines
from taskfabric.errors import InvalidRequest
from taskfabric.forwarder.endpoint_sharing import parse_limit, parse_since
from taskfabric.forwarder.listing import parse_task_query

BOB_ID = str(uuid.uuid4())
GROUP_ID = str(uuid.uuid4())
BOB: dict[str, Any] = {
    "user": "bob",
    "user_id": BOB_ID,
    "role": "submit",
    "max_waiting_tasks": 10,
    "max_tasks_per_day": None,
    "granted_at": 1.0,
    "granted_by": "alice",
}
LAB: dict[str, Any] = {
    "group": GROUP_ID,
    "group_name": "lab",
    "role": "manage",
    "max_waiting_tasks": None,
    "max_tasks_per_day": 500,
    "granted_at": 2.0,
    "granted_by": "alice",
}


@pytest.mark.parametrize(("text", "limit"), [(None, 100), ("", 100), ("1", 1), ("1000", 1000)])
def test_audit_limit_defaults_and_bounds(text: str | None, limit: int) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", ["0", "1001", "-1", "ten", "1e3", "٣"])
def test_a_bad_audit_limit_is_400_naming_it(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^limit: "):
        parse_limit(text)


def test_audit_before_is_a_time_or_400_naming_it() -> None:
    assert parse_since(None, "before") is None
    assert parse_since("1767225600.5", "before") == 1767225600.5
    for bad in ("nan", "inf", "-3", "yesterday"):
        with pytest.raises(InvalidRequest, match=r"^before: "):
            parse_since(bad, "before")


def test_all_users_needs_an_endpoint_and_a_yes_or_no() -> None:
    owner, endpoint_id = uuid.uuid4(), uuid.uuid4()
    query = parse_task_query(owner, endpoint_id=str(endpoint_id), all_users="true")
    assert query.all_users and query.endpoint_id == endpoint_id
    assert not parse_task_query(owner, endpoint_id=str(endpoint_id), all_users="false").all_users
    assert not parse_task_query(owner).all_users
    with pytest.raises(InvalidRequest, match=r"^all_users: needs endpoint_id"):
        parse_task_query(owner, all_users="true")
    with pytest.raises(InvalidRequest, match=r"^all_users: "):
        parse_task_query(owner, endpoint_id=str(endpoint_id), all_users="maybe")


def test_an_access_document_in_words() -> None:
    document = {"endpoint_id": "e1", "owner": "alice", "public": True, "grants": [BOB, LAB]}
    assert access_lines(document) == [
        "endpoint e1 (owner alice)",
        "public: yes (every authenticated user may submit)",
        "user bob: submit (max_waiting_tasks=10)",
        "group lab: manage (max_tasks_per_day=500)",
    ]
    assert access_lines({**document, "public": False, "grants": []})[1:] == ["public: no", "no grants"]


def test_the_client_finds_a_grant_by_user_name_or_id_or_group_and_sends_users_by_id() -> None:
    assert _names(BOB, "bob", None) and _names(BOB, BOB_ID, None) and not _names(BOB, "carol", None)
    assert _names(LAB, None, GROUP_ID) and not _names(LAB, "lab", None)
    assert _grant_request(BOB) == {"user": BOB_ID, "role": "submit", "max_waiting_tasks": 10, "max_tasks_per_day": None}
    assert _grant_request(LAB) == {
        "group": GROUP_ID,
        "role": "manage",
        "max_waiting_tasks": None,
        "max_tasks_per_day": 500,
    }
