"""The product end to end, as a researcher uses it: Client and Executor against a real forwarder,
a real broker and real endpoint agents with managers and workers (on SQLite and PostgreSQL)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from typing import Any

import numpy as np
import pytest

from taskfabric.client import Executor, TaskPending
from taskfabric.client.serialization import RemoteTraceback
from taskfabric.errors import AuthenticationError, NotFoundError, PermissionDenied
from taskfabric.testing import wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow


def square(x: int) -> int:
    return x * x


class CustomError(Exception):
    pass


@pytest.fixture(scope="module")
def endpoint(fabric: Fabric) -> str:
    return fabric.start_endpoint()


def test_executor_round_trips(fabric: Fabric, endpoint: str) -> None:
    offset = 10

    def shifted(x: int, *, by: int = 1) -> int:  # a closure with keyword arguments
        return x + offset + by

    def fails(message: str) -> None:
        raise ValueError(message)

    def raises_custom() -> None:
        raise CustomError("custom")

    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        assert executor.submit(square, 7).result(timeout=60) == 49
        assert executor.submit(shifted, 1, by=5).result(timeout=60) == 16
        assert (executor.submit(np.add, np.arange(3), 1).result(timeout=60) == np.array([1, 2, 3])).all()
        assert list(executor.map(square, range(20), timeout=60)) == [i * i for i in range(20)]

        future = executor.submit(fails, "bad value")
        with pytest.raises(ValueError, match="bad value") as caught:
            future.result(timeout=60)
        assert isinstance(caught.value.__cause__, RemoteTraceback)
        assert "in fails" in str(caught.value.__cause__)
        assert future.task_id is not None

        with pytest.raises(Exception) as custom:  # a class defined in a test module: rebuilt if picklable
            executor.submit(raises_custom).result(timeout=60)
        assert "custom" in str(custom.value)


def test_ten_thousand_tasks_through_an_executor(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        futures = [executor.submit(square, i) for i in range(10_000)]
        _done, not_done = concurrent.futures.wait(futures, timeout=240)
        assert not not_done
        assert [future.result() for future in futures] == [i * i for i in range(10_000)]
        assert len({future.task_id for future in futures}) == 10_000


def test_two_endpoints_at_once(fabric: Fabric, endpoint: str) -> None:
    second = fabric.start_endpoint()
    with fabric.client() as client:
        with Executor(endpoint, client=client) as first_executor, Executor(second, client=client) as second_executor:
            one = [first_executor.submit(os.getpid) for _ in range(20)]
            two = [second_executor.submit(os.getpid) for _ in range(20)]
            pids_one = {future.result(timeout=60) for future in one}
            pids_two = {future.result(timeout=60) for future in two}
        assert pids_one and pids_two and not pids_one & pids_two  # different workers ran them
        listed = {entry["id"]: entry for entry in client.list_endpoints()}
        assert listed[endpoint]["status"] == "online" and listed[second]["status"] == "online"
        assert {"id", "name", "status"} <= set(listed[endpoint])


def test_tasks_sent_to_a_stopped_endpoint_run_when_it_starts(fabric: Fabric) -> None:
    name = f"offline-{uuid.uuid4().hex[:6]}"
    endpoint_id = fabric.start_endpoint(name)
    fabric.stop_endpoint(name)
    with fabric.client() as client:
        wait_until(lambda: client.get_endpoint_status(endpoint_id)["status"] != "online", timeout_s=30, what="offline")
        function_id = client.register_function(square)
        batch = client.create_batch()
        for i in range(50):
            batch.add(function_id, i)
        task_ids = client.batch_run(endpoint_id, batch)
        with pytest.raises(TaskPending):
            client.get_result(task_ids[0])
        fabric.start_endpoint(name)
        results = wait_until(
            lambda: (r := client.get_batch_result(task_ids)) and all(not v["pending"] for v in r.values()) and r,
            timeout_s=90,
            what="results after the endpoint started",
        )
        assert [results[uuid.UUID(str(t))]["result"] for t in task_ids] == [i * i for i in range(50)]


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from taskfabric.client import Client, Executor

    def slow_square(x):
        time.sleep(1.0)
        return x * x

    client = Client(url=sys.argv[1], token=sys.argv[2])
    executor = Executor(sys.argv[3], client=client)
    futures = [executor.submit(slow_square, i) for i in range(6)]
    while any(f.task_id is None for f in futures):
        time.sleep(0.01)
    print(" ".join(str(f.task_id) for f in futures), flush=True)
    time.sleep(600)  # killed long before
    """
)


def test_a_client_killed_after_submitting_gets_its_results_by_id_later(fabric: Fabric, endpoint: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, fabric.url, fabric.token, endpoint], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    process.send_signal(signal.SIGKILL)  # the client dies with its tasks running
    process.wait()
    process.stdout.close()
    task_ids = line.split()
    assert len(task_ids) == 6
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        futures = executor.attach(task_ids)  # a new client re-attaches by id
        assert [future.result(timeout=60) for future in futures] == [i * i for i in range(6)]
        assert client.get_result(task_ids[3]) == 9


def test_client_api(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client:
        assert client.whoami()["username"] == fabric.username
        function_id = client.register_function(square)
        assert client.register_function(square) == function_id  # content-hashed: the same id
        task_id = client.run(12, endpoint_id=endpoint, function_id=function_id)
        value = wait_until(lambda: _result_or_none(client, task_id), timeout_s=60, what="the result")
        assert value == 144
        info = client.get_task(task_id)
        assert info["status"] == "success" and info["completed_at"] >= info["created_at"]
        assert info["details"]["worker_python"]
        with pytest.raises(NotFoundError):
            client.get_task(uuid.uuid4())


def _result_or_none(client: object, task_id: uuid.UUID) -> object:
    try:
        return client.get_result(task_id)  # type: ignore[attr-defined]
    except TaskPending:
        return None


def test_other_users_and_bad_tokens_are_refused(fabric: Fabric, endpoint: str) -> None:
    with fabric.client(token="tf_not-a-real-token") as intruder, pytest.raises(AuthenticationError):
        intruder.list_endpoints()
    _name, token = fabric.new_user()
    with fabric.client(token=token) as other, fabric.client() as owner:
        function_id = owner.register_function(square)
        with pytest.raises((PermissionDenied, NotFoundError)):
            other.run(1, endpoint_id=endpoint, function_id=function_id)
        own_function = other.register_function(square)
        with pytest.raises((PermissionDenied, NotFoundError)):
            other.run(1, endpoint_id=endpoint, function_id=own_function)
        assert endpoint not in {entry["id"] for entry in other.list_endpoints()}
