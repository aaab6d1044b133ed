"""Cancelling tasks through a real forwarder, broker and store (SQLite and PostgreSQL): the store
decides, the endpoint hears about it on its control queue, later results are ignored, and users
touch only their own tasks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from taskfabric.forwarder.routes import MAX_CANCEL_TASK_IDS
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result, TaskError
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def _cancel(api: ForwarderApi, task_ids: list[str]) -> dict[str, Any]:
    response = api.http.post("/v1/tasks/cancel", json={"task_ids": task_ids})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _ok(task_id: str) -> Result:
    return Result(task_id=uuid.UUID(task_id), ok=True, value=b"late", worker_python="3.11.9")


def test_cancelling_a_waiting_task(forwarder: Any, users: Users, fake_endpoints: FakeEndpoints) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    assert registration["broker"]["control_queue"].startswith(f"{forwarder.settings.topology_prefix}.control.")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    doomed, kept = alice.submit(registration["endpoint_id"], function_id, [b"a", b"b"])
    endpoint = fake_endpoints(registration)
    endpoint.consume_control()  # the endpoint's own broker user may read its control queue

    assert _cancel(alice, [doomed]) == {doomed: True}
    info = alice.task(doomed)
    assert info["status"] == "cancelled"
    assert info["error"]["code"] == "TASK_CANCELLED"
    assert info["completed_at"] is not None
    wait_until(lambda: endpoint.cancelled_ids == [uuid.UUID(doomed)], what="the CancelTasks on the control queue")

    # a result arriving later (the task ran before the cancel reached it) changes nothing
    endpoint.publish_results([_ok(doomed), _ok(kept)])
    wait_until(lambda: alice.task(kept)["status"] == "success", what="the other task's result")
    assert alice.task(doomed)["status"] == "cancelled"
    # cancelled is final: a second cancel reports False and sends nothing
    assert _cancel(alice, [doomed]) == {doomed: False}
    assert _cancel(alice, [kept]) == {kept: False}  # finished: unchanged
    assert alice.task(kept)["status"] == "success"
    assert endpoint.cancelled_ids == [uuid.UUID(doomed)]


def test_users_cannot_cancel_tasks_that_are_not_theirs(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_id,) = alice.submit(registration["endpoint_id"], function_id, [b"a"])
    endpoint = fake_endpoints(registration)
    endpoint.consume_control()
    unknown = str(uuid.uuid4())
    # another user's task and an unknown id answer the same: nothing about them leaks
    assert _cancel(bob, [task_id, unknown]) == {task_id: False, unknown: False}
    assert alice.task(task_id)["status"] == "waiting"
    assert _cancel(alice, [task_id]) == {task_id: True}
    wait_until(lambda: endpoint.cancelled_ids == [uuid.UUID(task_id)], what="alice's own cancel")


def test_cancel_requests_are_checked(forwarder: Any, users: Users) -> None:
    alice = users(forwarder)
    too_many = alice.http.post(
        "/v1/tasks/cancel", json={"task_ids": [str(uuid.uuid4()) for _ in range(MAX_CANCEL_TASK_IDS + 1)]}
    )
    assert too_many.status_code == 400
    assert f"limit of {MAX_CANCEL_TASK_IDS}" in too_many.json()["error"]["message"]
    malformed = alice.http.post("/v1/tasks/cancel", json={"task_ids": [str(uuid.uuid4()), "not-a-uuid"]})
    assert malformed.status_code == 400
    assert "task_ids[1]" in malformed.json()["error"]["message"]
    assert alice.http.post("/v1/tasks/cancel", json={"task_ids": []}).status_code == 400
    assert alice.http.post("/v1/tasks/cancel", json={"task_ids": "x"}).status_code in (400, 422)
    assert alice.http.post("/v1/tasks/cancel", content=b"{").status_code in (400, 422)


def test_an_endpoint_reporting_a_cancelled_task_ends_it_cancelled(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    """The store missed a cancel the endpoint carried out: the task ends `cancelled`, not `failed`."""
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_id,) = alice.submit(registration["endpoint_id"], function_id, [b"a"])
    endpoint = fake_endpoints(registration)
    cancelled = Result(
        task_id=uuid.UUID(task_id),
        ok=False,
        error=TaskError(code="TASK_CANCELLED", message="the task was cancelled before it started"),
    )
    endpoint.publish_results([cancelled])
    wait_until(lambda: alice.task(task_id)["status"] != "waiting", what="the answer stored")
    info = alice.task(task_id)
    assert info["status"] == "cancelled"
    assert info["error"]["code"] == "TASK_CANCELLED"
