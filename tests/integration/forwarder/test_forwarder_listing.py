"""Listing tasks (`GET /v1/tasks`) and task groups through a real forwarder, broker and store
(SQLite and PostgreSQL): keyset pages newest first, every filter, other users' tasks never shown,
bad parameters refused with a 400 naming them, and the task group carried from submission to the
store, the task info and the endpoint's task message."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from taskfabric.forwarder.records import TaskStatus
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result, TaskError
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]

SUMMARY_FIELDS = {
    "task_id",
    "status",
    "endpoint_id",
    "function_id",
    "task_group_id",
    "created_at",
    "started_at",
    "completed_at",
    "error_code",
    "submitted_by",  # endpoint sharing: who submitted it (here always the caller)
}


def _all_pages(api: ForwarderApi, *, cursor: str | None = None, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following `next_cursor` (bounded: a loop would fail the test)."""
    pages: list[list[dict[str, Any]]] = []
    for _ in range(100):
        page = api.list_tasks(cursor=cursor, **params)
        pages.append(page["tasks"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the listing never ended")


def _ids(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [task["task_id"] for page in pages for task in page]


def _newest_first(tasks: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(tasks, key=lambda task: (task["created_at"], uuid.UUID(task["task_id"])), reverse=True)
    return [task["task_id"] for task in ordered]


def test_25_tasks_in_pages_of_10_newest_first_none_missing_none_repeated(forwarder: Any, users: Users) -> None:
    alice = users(forwarder)
    endpoint_id = alice.register_endpoint("lab")["endpoint_id"]
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    submitted: list[str] = []
    for batch in range(5):  # five requests: five creation times, five tasks sharing each
        submitted += alice.submit(endpoint_id, function_id, [b"%d" % (batch * 5 + i) for i in range(5)])

    pages = _all_pages(alice, limit=10)

    assert [len(page) for page in pages] == [10, 10, 5]
    listed = _ids(pages)
    assert len(set(listed)) == 25 and set(listed) == set(submitted)
    everything = [task for page in pages for task in page]
    assert listed == _newest_first(everything)
    assert set(listed[:5]) == set(submitted[20:])  # the last request's tasks come first
    for task in everything:
        assert set(task) == SUMMARY_FIELDS  # no result bytes, no error payload
        assert task["status"] == TaskStatus.WAITING.value
        assert task["endpoint_id"] == endpoint_id and task["function_id"] == function_id
        assert task["task_group_id"] is None
    # the default page holds them all, and says it is the last
    whole = alice.list_tasks()
    assert [task["task_id"] for task in whole["tasks"]] == listed and whole["next_cursor"] is None


def test_each_filter_narrows_the_listing(forwarder: Any, users: Users, fake_endpoints: FakeEndpoints) -> None:
    alice = users(forwarder)
    lab = alice.register_endpoint("lab")
    cluster_id = alice.register_endpoint("cluster")["endpoint_id"]
    f = alice.register_function(b"f" + uuid.uuid4().bytes)
    g = alice.register_function(b"g" + uuid.uuid4().bytes)
    group = str(uuid.uuid4())
    on_lab = alice.submit(lab["endpoint_id"], f, [b"1", b"2", b"3"])
    grouped = alice.submit(lab["endpoint_id"], g, [b"4", b"5"], task_group_id=group)
    on_cluster = alice.submit(cluster_id, f, [b"6"], binary=False)
    endpoint = fake_endpoints(lab)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 5, what="the lab's tasks delivered")
    failure = TaskError(code="TASK_FAILED", message="ValueError: no", exception_type="ValueError")
    endpoint.publish_results(
        [
            Result(task_id=uuid.UUID(on_lab[0]), ok=True, value=b"v", started_at=10.0, finished_at=11.0, attempts=1),
            Result(task_id=uuid.UUID(grouped[0]), ok=False, error=failure, attempts=1),
        ]
    )
    wait_until(lambda: alice.task(grouped[0])["status"] == TaskStatus.FAILED.value, what="results stored")

    def listed(**params: Any) -> set[str]:
        return set(_ids(_all_pages(alice, **params)))

    assert listed() == set(on_lab + grouped + on_cluster)
    assert listed(endpoint_id=cluster_id) == set(on_cluster)
    assert listed(endpoint_id=lab["endpoint_id"]) == set(on_lab + grouped)
    assert listed(function_id=g) == set(grouped)
    assert listed(group_id=group) == set(grouped)
    assert listed(status=TaskStatus.SUCCESS.value) == {on_lab[0]}
    assert listed(status=TaskStatus.FAILED.value) == {grouped[0]}
    assert listed(status=TaskStatus.WAITING.value) == set(on_lab[1:] + grouped[1:] + on_cluster)
    assert listed(status=TaskStatus.FAILED.value, group_id=group, function_id=g) == {grouped[0]}
    assert listed(status=TaskStatus.SUCCESS.value, group_id=group) == set()
    cluster_created = alice.task(on_cluster[0])["created_at"]
    assert listed(since=repr(cluster_created)) == set(on_cluster)
    assert listed(since=repr(cluster_created + 3600)) == set()

    done = alice.list_tasks(status=TaskStatus.SUCCESS.value)["tasks"][0]
    assert done["started_at"] == 10.0 and done["completed_at"] is not None and done["error_code"] is None
    failed = alice.list_tasks(status=TaskStatus.FAILED.value)["tasks"][0]
    assert failed["error_code"] == "TASK_FAILED" and failed["task_group_id"] == group


def test_another_users_tasks_are_never_listed(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    group = str(uuid.uuid4())
    alice_endpoint = alice.register_endpoint("lab")["endpoint_id"]
    alice_tasks = alice.submit(
        alice_endpoint, alice.register_function(b"a" + uuid.uuid4().bytes), [b"1", b"2", b"3"], task_group_id=group
    )
    bob_endpoint = bob.register_endpoint("lab")["endpoint_id"]
    bob_tasks = bob.submit(bob_endpoint, bob.register_function(b"b" + uuid.uuid4().bytes), [b"4", b"5"])

    assert set(_ids(_all_pages(bob))) == set(bob_tasks)
    assert set(_ids(_all_pages(alice))) == set(alice_tasks)
    # alice's group, endpoint, or a cursor from alice's listing show bob nothing of hers
    assert bob.list_tasks(group_id=group)["tasks"] == []
    assert bob.list_tasks(endpoint_id=alice_endpoint)["tasks"] == []
    alice_cursor = alice.list_tasks(limit=1)["next_cursor"]
    assert alice_cursor is not None
    after_cursor = set(_ids(_all_pages(bob, cursor=alice_cursor)))
    assert after_cursor <= set(bob_tasks)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("status", "finished"),
        ("status", "WAITING'; DROP TABLE tasks; --"),
        ("endpoint_id", "not-a-uuid"),
        ("function_id", "1234"),
        ("group_id", "x" * 500),
        ("since", "yesterday"),
        ("since", "nan"),
        ("since", "-5"),
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "ten"),
        ("limit", "-1"),
        ("cursor", "garbage"),
        ("cursor", "MTpub3Q6YQ"),  # base64 of a cursor-like text with bad parts
        ("cursor", "%%%"),
    ],
)
def test_bad_parameters_are_refused_with_400_naming_them(
    forwarder: Any, users: Users, parameter: str, value: str
) -> None:
    alice = users(forwarder)
    response = alice.http.get("/v1/tasks", params={parameter: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["message"].startswith(f"{parameter}:"), error["message"]
    assert alice.http.get("/v1/tasks").status_code == 200  # nothing else is affected


def test_the_task_group_travels_to_the_store_the_task_info_and_the_endpoint(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    group = str(uuid.uuid4())
    grouped = alice.submit(registration["endpoint_id"], function_id, [b"1", b"2"], task_group_id=group)
    grouped += alice.submit(registration["endpoint_id"], function_id, [b"3"], task_group_id=group, binary=False)
    loose = alice.submit(registration["endpoint_id"], function_id, [b"4"])

    assert {alice.task(task_id)["task_group_id"] for task_id in grouped} == {group}
    assert alice.task(loose[0])["task_group_id"] is None
    assert set(_ids(_all_pages(alice, group_id=group))) == set(grouped)
    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 4, what="tasks delivered")
    carried = {str(task.task_id): task.task_group_id for batch in endpoint.batches for task in batch.tasks}
    assert carried == {**{task_id: uuid.UUID(group) for task_id in grouped}, loose[0]: None}


@pytest.mark.parametrize("value", ["not-a-uuid", 42, ["x"]])
def test_a_bad_task_group_id_refuses_the_submission_naming_it(forwarder: Any, users: Users, value: Any) -> None:
    alice = users(forwarder)
    endpoint_id = alice.register_endpoint("lab")["endpoint_id"]
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    response = alice.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        json={"tasks": [{"function_id": function_id, "payload": "eA=="}], "task_group_id": value},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("task_group_id:")
    assert alice.list_tasks()["tasks"] == []


def test_tasks_submitted_while_paging_neither_repeat_nor_hide_a_task(forwarder: Any, users: Users) -> None:
    alice = users(forwarder)
    endpoint_id = alice.register_endpoint("lab")["endpoint_id"]
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    first = [task_id for i in range(3) for task_id in alice.submit(endpoint_id, function_id, [b"%d" % i] * 4)]
    page = alice.list_tasks(limit=5)
    later = alice.submit(endpoint_id, function_id, [b"new"] * 6)  # newer than every listed task
    rest = _all_pages(alice, cursor=page["next_cursor"], limit=5)

    listed = [task["task_id"] for task in page["tasks"]] + _ids(rest)
    assert len(listed) == len(set(listed)) == 12 and set(listed) == set(first)
    assert set(_ids(_all_pages(alice, limit=5))) == set(first + later)  # a new listing starts with them
