"""`GET /v1/activity` (what `taskfabric top` shows) through a real forwarder, broker and store
(SQLite and PostgreSQL): a user's tasks per endpoint by state, finished ones only within the
window, the newest failures first; another user's tasks never counted nor listed; bad parameters
refused with a 400 naming them; no answer without a token."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from taskfabric.forwarder.records import TaskStatus
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result, TaskError, TaskEvents, TaskStarted
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def _activity(api: ForwarderApi, **params: Any) -> dict[str, Any]:
    response = api.http.get("/v1/activity", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _by_endpoint(answer: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        item["endpoint_id"]: {key: value for key, value in item.items() if key != "endpoint_id"}
        for item in answer["endpoints"]
    }


def _failure(code: str) -> TaskError:
    return TaskError(code=code, message=f"{code} happened", exception_type="RuntimeError")


def test_counts_by_state_and_newest_failures_of_the_caller_only(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    lab = alice.register_endpoint("lab")
    cluster_id = alice.register_endpoint("cluster")["endpoint_id"]
    f = alice.register_function(b"f" + uuid.uuid4().bytes)
    on_lab = alice.submit(lab["endpoint_id"], f, [b"%d" % i for i in range(6)])
    on_cluster = alice.submit(cluster_id, f, [b"a", b"b"])
    bob_endpoint = bob.register_endpoint("lab")["endpoint_id"]
    bob_tasks = bob.submit(bob_endpoint, bob.register_function(b"g" + uuid.uuid4().bytes), [b"x", b"y", b"z"])

    endpoint = fake_endpoints(lab)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 6, what="the lab's tasks delivered")
    ids = [uuid.UUID(task_id) for task_id in on_lab]
    endpoint.publish_message(TaskEvents(started=[TaskStarted(task_id=ids[5], started_at=time.time())]))
    endpoint.publish_results([Result(task_id=ids[0], ok=True, value=b"v"), Result(task_id=ids[1], ok=True, value=b"v")])
    endpoint.publish_results([Result(task_id=ids[2], ok=False, error=_failure("TASK_FAILED"))])
    wait_until(lambda: alice.task(on_lab[2])["status"] == TaskStatus.FAILED.value, what="the first failure stored")
    endpoint.publish_results([Result(task_id=ids[3], ok=False, error=_failure("WORKER_LOST"))])
    wait_until(lambda: alice.task(on_lab[3])["status"] == TaskStatus.FAILED.value, what="the second failure stored")
    wait_until(lambda: alice.task(on_lab[5])["status"] == TaskStatus.RUNNING.value, what="the start stored")

    answer = _activity(alice, window_s="600")

    assert answer["window_s"] == 600.0 and abs(answer["as_of"] - time.time()) < 60
    assert _by_endpoint(answer) == {
        lab["endpoint_id"]: {"waiting": 1, "running": 1, "completed": 2, "failed": 2, "cancelled": 0},
        cluster_id: {"waiting": 2, "running": 0, "completed": 0, "failed": 0, "cancelled": 0},
    }
    failures = answer["recent_failures"]
    assert [(item["task_id"], item["code"]) for item in failures] == [
        (on_lab[3], "WORKER_LOST"),
        (on_lab[2], "TASK_FAILED"),
    ]
    assert all(item["endpoint_id"] == lab["endpoint_id"] for item in failures)
    assert failures[0]["completed_at"] >= failures[1]["completed_at"]
    assert [item["task_id"] for item in _activity(alice, failures="1")["recent_failures"]] == [on_lab[3]]
    assert _activity(alice, failures="0")["recent_failures"] == []

    # bob sees his own waiting tasks only: nothing of alice's endpoints, tasks or failures
    bob_answer = _activity(bob)
    assert _by_endpoint(bob_answer) == {
        bob_endpoint: {"waiting": len(bob_tasks), "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    }
    assert bob_answer["recent_failures"] == []
    assert on_cluster  # alice's other endpoint's tasks were counted above


def test_finished_tasks_leave_a_short_window_and_unfinished_ones_stay(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    lab = alice.register_endpoint("lab")
    task_ids = alice.submit(lab["endpoint_id"], alice.register_function(b"f" + uuid.uuid4().bytes), [b"1", b"2"])
    endpoint = fake_endpoints(lab)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 2, what="tasks delivered")
    endpoint.publish_results([Result(task_id=uuid.UUID(task_ids[0]), ok=True, value=b"v")])
    wait_until(lambda: alice.task(task_ids[0])["status"] == TaskStatus.SUCCESS.value, what="the result stored")
    assert _by_endpoint(_activity(alice, window_s="600"))[lab["endpoint_id"]]["completed"] == 1

    def settled() -> dict[str, int] | None:
        counts = _by_endpoint(_activity(alice, window_s="0.5"))[lab["endpoint_id"]]
        return counts if counts["completed"] == 0 else None

    counts = wait_until(settled, timeout_s=10, interval_s=0.2, what="the completion out of a 0.5 s window")
    assert counts == {"waiting": 1, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert _activity(alice, window_s="3600")["recent_failures"] == []


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("window_s", "0"),
        ("window_s", "-5"),
        ("window_s", "3601"),
        ("window_s", "nan"),
        ("window_s", "inf"),
        ("window_s", "a minute"),
        ("window_s", "9" * 400),
        ("failures", "101"),
        ("failures", "-1"),
        ("failures", "1.5"),
        ("failures", "ten"),
        ("failures", "٣"),  # a decimal digit, not an ASCII one
    ],
)
def test_bad_parameters_are_refused_with_400_naming_them(
    forwarder: Any, users: Users, parameter: str, value: str
) -> None:
    alice = users(forwarder)
    response = alice.http.get("/v1/activity", params={parameter: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["message"].startswith(f"{parameter}:"), error["message"]
    assert alice.http.get("/v1/activity").status_code == 200  # nothing else is affected


def test_no_activity_without_a_token(forwarder: Any) -> None:
    import httpx

    response = httpx.get(f"{forwarder.url}/v1/activity", timeout=30)
    assert response.status_code == 401
    assert "endpoints" not in response.text
