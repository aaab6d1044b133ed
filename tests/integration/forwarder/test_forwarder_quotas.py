"""Per-user quotas and the ingest's result limits through a real forwarder process, broker and store
(SQLite and PostgreSQL): each quota answers 429 with `Retry-After` and a message naming it and its
value, refuses before recording anything, and leaves other users alone; oversized results and
over-full result messages end their tasks as RESULT_TOO_LARGE; endpoints beyond one connection's
consumer channels are all consumed.

This module runs its own forwarder per backend, with small quotas (the session forwarder's are the
generous defaults that other tests rely on)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.quotas import QUOTA_READ_FRESH_S
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi, ForwarderProcess
from taskfabric.forwarder.testing.postgres import postgres_for_tests
from taskfabric.protocol import Result
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

from .conftest import TEST_SETTINGS

pytestmark = pytest.mark.timeout(180)

QUOTAS: dict[str, Any] = {
    "max_pending_tasks_per_user": 5,
    "max_endpoints_per_user": 3,
    "submit_requests_per_s": 0.1,
    "submit_burst": 4,
    "max_result_bytes_per_day": 4096,
    "max_result_bytes": 2048,
    "max_results_per_message": 4,
    "consumers_per_connection": 2,
}


class QuotaForwarder:
    """A forwarder process with `QUOTAS`, and fresh users of it."""

    def __init__(self, process: ForwarderProcess, settings: ForwarderSettings) -> None:
        self.process = process
        self.settings = settings
        self._users: list[ForwarderApi] = []

    def new_user(self) -> ForwarderApi:
        name = unique_name("quota")
        create_user(self.settings, name)
        api = ForwarderApi(self.process.url, create_token(self.settings, name), username=name)
        self._users.append(api)
        return api

    def close_users(self) -> None:
        for api in self._users:
            api.close()
        self._users.clear()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def quota_forwarder(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QuotaForwarder]:
    folder: Path = tmp_path_factory.mktemp(f"quotas-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":  # a database of its own: the session forwarder's endpoints are not ours
            database_url = stack.enter_context(postgres_for_tests(folder / "pg"))
        else:
            database_url = f"sqlite:///{folder / 'forwarder.db'}"
        assert broker.management_url
        values = {
            **TEST_SETTINGS,
            "database_url": database_url,
            "amqp_url": broker.amqp_url,
            "management_url": broker.management_url,
            "topology_prefix": unique_name(f"fwq-{request.param}"),
            "quotas": QUOTAS,
        }
        process = stack.enter_context(ForwarderProcess(folder, values))
        running = QuotaForwarder(process, ForwarderSettings.from_mapping(values))
        yield running
        running.close_users()


@pytest.fixture
def fake_endpoint() -> Iterator[Callable[[dict[str, Any]], FakeEndpoint]]:
    made: list[FakeEndpoint] = []

    def make(registration: dict[str, Any]) -> FakeEndpoint:
        made.append(FakeEndpoint(registration).start())
        return made[-1]

    yield make
    for endpoint in made:
        endpoint.close()


def _submit(
    api: ForwarderApi, endpoint_id: str, function_id: str, count: int, *, submission_id: str | None = None
) -> httpx.Response:
    tasks = [{"function_id": function_id, "payload": b"p%d" % index} for index in range(count)]
    keyed = {"submission_id": submission_id} if submission_id is not None else {}
    return api.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        content=msgpack.packb({"tasks": tasks, "client_python": "3.11.7", **keyed}),
        headers={"Content-Type": "application/msgpack"},
    )


def _task_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 201, response.text
    return list(msgpack.unpackb(response.content)["task_ids"])


def _assert_quota_refusal(response: httpx.Response, quota: str, limit: float) -> dict[str, Any]:
    """A 429 with Retry-After naming `quota` and its value; returns the error."""
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "QUOTA_EXCEEDED"
    assert error["quota"] == quota and error["limit"] == limit
    assert f"quotas.{quota}" in error["message"] and f"{limit:g}" in error["message"]
    return error


def _setup(api: ForwarderApi, name: str = "lab") -> tuple[dict[str, Any], str]:
    registration = api.register_endpoint(name)
    function_id = api.register_function(b"f" + uuid.uuid4().bytes)
    return registration, function_id


def _ok(task_id: str, value: bytes) -> Result:
    return Result(task_id=uuid.UUID(task_id), ok=True, value=value, worker_python="3.11.9")


def _wait_finished(api: ForwarderApi, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        found.update(api.tasks(task_ids)["tasks"])
        return all(found.get(task_id, {}).get("status") not in (None, "waiting", "running") for task_id in task_ids)

    wait_until(done, timeout_s=30, what="the tasks to finish")
    return found


# --- quotas ---------------------------------------------------------------------------------


def test_submit_requests_beyond_the_rate_answer_429_and_other_users_are_not_slowed(
    quota_forwarder: QuotaForwarder,
) -> None:
    alice, bob = quota_forwarder.new_user(), quota_forwarder.new_user()
    registration, function_id = _setup(alice)
    for _ in range(4):  # the burst
        _task_ids(_submit(alice, registration["endpoint_id"], function_id, 1))
    refused = _submit(alice, registration["endpoint_id"], function_id, 1)
    _assert_quota_refusal(refused, "submit_requests_per_s", 0.1)
    assert int(refused.headers["Retry-After"]) <= 10
    assert len(alice.list_tasks()["tasks"]) == 4, "the refused request recorded tasks"

    bob_registration, bob_function = _setup(bob)
    assert len(_task_ids(_submit(bob, bob_registration["endpoint_id"], bob_function, 1))) == 1


def test_unfinished_tasks_beyond_the_quota_answer_429_until_some_finish(
    quota_forwarder: QuotaForwarder, fake_endpoint: Callable[[dict[str, Any]], FakeEndpoint]
) -> None:
    alice = quota_forwarder.new_user()
    registration, function_id = _setup(alice)
    endpoint_id = registration["endpoint_id"]
    first = _task_ids(_submit(alice, endpoint_id, function_id, 3))

    _assert_quota_refusal(_submit(alice, endpoint_id, function_id, 3), "max_pending_tasks_per_user", 5)
    assert len(alice.list_tasks()["tasks"]) == 3, "the refused batch recorded tasks"

    fake_endpoint(registration).publish_results([_ok(task_id, b"v") for task_id in first])
    _wait_finished(alice, first)
    assert len(_task_ids(_submit(alice, endpoint_id, function_id, 3))) == 3


def test_a_retried_submission_that_was_stored_passes_a_full_quota_with_the_same_ids(
    quota_forwarder: QuotaForwarder,
) -> None:
    """A client that lost the answer retries with the same submission_id: refusing it with 429
    would leave it unsure whether its tasks were accepted (they were)."""
    alice = quota_forwarder.new_user()
    registration, function_id = _setup(alice)
    endpoint_id, key = registration["endpoint_id"], str(uuid.uuid4())
    accepted = _task_ids(_submit(alice, endpoint_id, function_id, 4, submission_id=key))
    _assert_quota_refusal(_submit(alice, endpoint_id, function_id, 2), "max_pending_tasks_per_user", 5)

    assert _task_ids(_submit(alice, endpoint_id, function_id, 4, submission_id=key)) == accepted
    assert len(alice.list_tasks()["tasks"]) == 4


def test_endpoints_beyond_the_quota_answer_429_but_re_registering_one_is_free(
    quota_forwarder: QuotaForwarder,
) -> None:
    alice, bob = quota_forwarder.new_user(), quota_forwarder.new_user()
    registered = [alice.register_endpoint(f"ep{index}") for index in range(3)]
    refused = alice.http.post("/v1/endpoints", json={"name": "ep3"})
    _assert_quota_refusal(refused, "max_endpoints_per_user", 3)
    names = {endpoint["name"] for endpoint in alice.http.get("/v1/endpoints").json()["endpoints"]}
    assert names == {"ep0", "ep1", "ep2"}

    again = alice.http.post("/v1/endpoints", json={"name": "ep1"})
    assert again.status_code in (200, 201), again.text
    bob.register_endpoint("ep0")  # another user's count is their own

    assert alice.http.delete(f"/v1/endpoints/{registered[0]['endpoint_id']}").status_code == 204
    alice.register_endpoint("ep3")


def test_result_bytes_beyond_the_daily_quota_refuse_new_submits_until_midnight(
    quota_forwarder: QuotaForwarder, fake_endpoint: Callable[[dict[str, Any]], FakeEndpoint]
) -> None:
    alice, bob = quota_forwarder.new_user(), quota_forwarder.new_user()
    registration, function_id = _setup(alice)
    task_ids = _task_ids(_submit(alice, registration["endpoint_id"], function_id, 3))
    fake_endpoint(registration).publish_results([_ok(task_id, b"r" * 2000) for task_id in task_ids])
    _wait_finished(alice, task_ids)

    # the count is written with the status reports (every status_flush_s), and a submit re-reads
    # it once the last read is QUOTA_READ_FRESH_S old: past both, the very next submit is refused
    time.sleep(QUOTA_READ_FRESH_S + quota_forwarder.settings.status_flush_s + 0.5)
    response = _submit(alice, registration["endpoint_id"], function_id, 1)
    error = _assert_quota_refusal(response, "max_result_bytes_per_day", 4096)
    assert "6000" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 86400

    bob_registration, bob_function = _setup(bob)
    assert len(_task_ids(_submit(bob, bob_registration["endpoint_id"], bob_function, 1))) == 1


# --- ingest limits --------------------------------------------------------------------------


def test_an_oversized_result_ends_its_task_as_result_too_large_and_the_others_are_stored(
    quota_forwarder: QuotaForwarder, fake_endpoint: Callable[[dict[str, Any]], FakeEndpoint]
) -> None:
    alice = quota_forwarder.new_user()
    registration, function_id = _setup(alice)
    small, big, other = _task_ids(_submit(alice, registration["endpoint_id"], function_id, 3))
    fake_endpoint(registration).publish_results([_ok(small, b"s" * 10), _ok(big, b"b" * 2049), _ok(other, b"o" * 2048)])
    found = _wait_finished(alice, [small, big, other])

    assert found[small]["status"] == "success" and found[other]["status"] == "success"
    refused = found[big]
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "RESULT_TOO_LARGE"
    assert "2049 bytes" in refused["error"]["message"] and "quotas.max_result_bytes" in refused["error"]["message"]


def test_a_message_with_too_many_results_is_refused_with_a_typed_outcome_for_its_tasks(
    quota_forwarder: QuotaForwarder, fake_endpoint: Callable[[dict[str, Any]], FakeEndpoint]
) -> None:
    alice = quota_forwarder.new_user()
    registration, function_id = _setup(alice)
    task_ids = _task_ids(_submit(alice, registration["endpoint_id"], function_id, 2))
    endpoint = fake_endpoint(registration)
    padding = [str(uuid.uuid4()) for _ in range(3)]  # 5 results: one above max_results_per_message
    endpoint.publish_results([_ok(task_id, b"v") for task_id in task_ids + padding])
    found = _wait_finished(alice, task_ids)
    for task_id in task_ids:
        assert found[task_id]["status"] == "failed"
        assert found[task_id]["error"]["code"] == "RESULT_TOO_LARGE"
        assert "5 results" in found[task_id]["error"]["message"]
        assert "quotas.max_results_per_message" in found[task_id]["error"]["message"]

    # the ingest goes on: a message within the limit, after it, is stored
    more = _task_ids(_submit(alice, registration["endpoint_id"], function_id, 2))
    endpoint.publish_results([_ok(task_id, b"v") for task_id in more])
    assert {task["status"] for task in _wait_finished(alice, more).values()} == {"success"}


# --- many endpoints -------------------------------------------------------------------------


def test_endpoints_beyond_one_connections_consumers_are_all_consumed(
    quota_forwarder: QuotaForwarder, fake_endpoint: Callable[[dict[str, Any]], FakeEndpoint]
) -> None:
    """consumers_per_connection is 2 here: 9 endpoints need at least 5 connections."""
    submitted: list[tuple[ForwarderApi, list[str]]] = []
    for _ in range(3):
        user = quota_forwarder.new_user()
        function_id = user.register_function(b"f" + uuid.uuid4().bytes)
        for index in range(3):
            registration = user.register_endpoint(f"many{index}")
            task_ids = _task_ids(_submit(user, registration["endpoint_id"], function_id, 1))
            fake_endpoint(registration).publish_results([_ok(task_ids[0], b"v")])
            submitted.append((user, task_ids))
    for user, task_ids in submitted:
        assert _wait_finished(user, task_ids)[task_ids[0]]["status"] == "success"
    log = quota_forwarder.process.log_file.read_text(errors="replace")
    assert "opened result-consumer connection 5" in log
