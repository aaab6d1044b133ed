"""Executor regressions (issue 10 item 7) and one outcome per crash (issue 9 item 4), end to end: a
real forwarder, broker, agent and workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskfabric.client import Client, Executor, NotFoundError, TaskExecutionFailed, WorkerLost
from taskfabric.forwarder.store import Store
from taskfabric.testing import wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow


def slow_double(x: int, delay_s: float = 1.0) -> int:
    time.sleep(delay_s)
    return 2 * x


def cube(x: int) -> int:
    return x * x * x


def add(a: int, b: int) -> int:
    return a + b


class NeedsTwo(Exception):
    """An exception whose `__init__` takes more than its message: it does not unpickle."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raises_needs_two() -> None:
    raise NeedsTwo("two arguments", 7)


@pytest.fixture(scope="module")
def endpoint(fabric: Fabric) -> str:
    return fabric.start_endpoint()


class CountingClient(Client):
    """A real client that notes every function registration request and the thread that sent it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registrations: list[str] = []

    def register_serialized_function(self, body: bytes, *, name: str) -> uuid.UUID:
        self.registrations.append(threading.current_thread().name)
        return super().register_serialized_function(body, name=name)


def test_shutdown_without_waiting_still_completes_sent_futures(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client:
        executor = Executor(endpoint, client=client)
        sent = executor.submit(slow_double, 21, delay_s=2.0)
        wait_until(lambda: sent.task_id is not None, timeout_s=30, what="the task sent")
        queued = executor.submit(slow_double, 5, delay_s=0.0)  # perhaps not sent yet: sent anyway
        executor.shutdown(wait=False)
        assert sent.result(timeout=60) == 42
        assert queued.result(timeout=60) == 10
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(slow_double, 1)


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from taskfabric.client import Client, Executor

    def slow(x):
        time.sleep(x)
        return x

    executor = Executor(sys.argv[3], client=Client(url=sys.argv[1], token=sys.argv[2]))
    finished = executor.submit(slow, 0.5)
    abandoned = executor.submit(slow, 600)
    executor.shutdown(wait=False)
    print(finished.result(timeout=60), flush=True)
    # leaving with a task still running: the process must exit anyway
    """
)


def test_a_process_exits_after_shutdown_without_waiting(fabric: Fabric, endpoint: str) -> None:
    process = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, fabric.url, fabric.token, endpoint],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "0.5"


MODULE_SOURCE = textwrap.dedent(
    """
    def triple(x):
        return 3 * x
    """
)


def test_register_by_value_after_a_by_reference_submit_is_honoured(
    fabric: Fabric, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_name = f"onlyhere_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, not on the endpoint's workers
    module = __import__(module_name)
    try:
        with fabric.client() as client, Executor(endpoint, client=client) as executor:
            with pytest.raises(Exception, match=module_name):  # by reference: the worker cannot import it
                executor.submit(module.triple, 2).result(timeout=60)
            by_value = executor.register_function(module.triple, by_value=True)
            assert executor.submit(module.triple, 2).result(timeout=60) == 6
            assert executor.register_function(module.triple) == by_value
    finally:
        sys.modules.pop(module_name, None)


def test_a_deleted_function_is_registered_again(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        assert executor.submit(cube, 2).result(timeout=60) == 8
        client.delete_function(executor.register_function(cube))
        assert executor.submit(cube, 3).result(timeout=60) == 27
        assert executor.submit(cube, 4).result(timeout=60) == 64


def test_a_task_id_that_is_not_a_function_still_fails_with_not_found(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit_to_registered_function(uuid.uuid4(), (1,))
        with pytest.raises(NotFoundError, match="no function"):
            future.result(timeout=60)


def test_a_future_names_its_task_as_soon_as_its_result_is_in(fabric: Fabric, endpoint: str) -> None:
    """The Executor watches a batch's task ids on the results stream before it sends the batch
    (`ResultStream.expect`): a fast task's result may resolve its future before the submit's answer
    reaches the client, and the future names its task by then. A refused submit names none."""
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        futures = []
        for x in range(50):
            future = executor.submit(cube, x)
            assert future.result(timeout=60) == x**3
            assert future.task_id is not None, "a resolved future does not name its task"
            futures.append(future)
        assert len({future.task_id for future in futures}) == 50
        for future in futures[-5:]:
            assert client.get_task(str(future.task_id))["status"] == "success"
        refused = executor.submit_to_registered_function(uuid.uuid4(), (1,))
        with pytest.raises(NotFoundError):
            refused.result(timeout=60)
        assert refused.task_id is None


def test_an_exception_that_does_not_unpickle_says_why_with_the_remote_traceback(fabric: Fabric, endpoint: str) -> None:
    with (
        fabric.client() as client,
        Executor(endpoint, client=client) as executor,
        pytest.raises(TaskExecutionFailed) as caught,
    ):
        executor.submit(raises_needs_two).result(timeout=60)
    error = caught.value
    assert "could not be unpickled: TypeError" in str(error)
    assert "not importable" not in str(error)
    assert error.exception_type.endswith("NeedsTwo")
    assert "raises_needs_two" in error.remote_traceback
    assert "NeedsTwo: two arguments" in error.remote_traceback


def _adder(k: int) -> Callable[[int], int]:
    return lambda x: x + k


def test_new_closures_register_once_per_body_on_the_submit_thread(fabric: Fabric, endpoint: str) -> None:
    with CountingClient(url=fabric.url, token=fabric.token) as client, Executor(endpoint, client=client) as executor:
        futures = [executor.submit(lambda x: x * 10, i) for i in range(300)]  # a new lambda each time
        futures += [executor.submit(_adder(k), 1) for k in (100, 200, 100)]
        assert [future.result(timeout=120) for future in futures] == [i * 10 for i in range(300)] + [101, 201, 101]
    assert len(client.registrations) == 3  # one per distinct body: the lambda, adder(100), adder(200)
    assert set(client.registrations) == {"task-submitter"}  # never on the caller's thread


def _owner_task_count(fabric: Fabric, client: Client) -> int:
    with Store.open(fabric.settings.store_url) as store:
        return store.tasks.count(owner_id=uuid.UUID(client.whoami()["user_id"]))


def test_map_with_chunksize_sends_that_many_calls_per_task(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        before = _owner_task_count(fabric, client)  # this module's tests run one at a time
        results = list(executor.map(add, range(10), range(100, 110), chunksize=4, timeout=120))
        assert results == [a + b for a, b in zip(range(10), range(100, 110), strict=True)]
        assert _owner_task_count(fabric, client) - before == 3  # 4 + 4 + 2 calls
        assert list(executor.map(add, [1, 2], [3, 4], timeout=60)) == [4, 6]
        assert _owner_task_count(fabric, client) - before == 5
        with pytest.raises(ValueError, match="chunksize"):
            executor.map(add, [1], [2], chunksize=0)


def test_an_executor_finds_an_endpoint_by_name(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client:
        name = client.get_endpoint(endpoint)["name"]
        with Executor(name, client=client) as executor:
            assert str(executor.endpoint_id) == endpoint
            assert executor.submit(cube, 5).result(timeout=60) == 125
        with pytest.raises(NotFoundError, match=r"no endpoint named 'no-such-endpoint'.*endpoint id"):
            Executor("no-such-endpoint", client=client)


def kills_its_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_task_that_kills_its_worker_on_every_attempt_always_ends_as_worker_lost(
    fabric: Fabric, endpoint: str
) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        futures = [executor.submit(kills_its_worker) for _ in range(5)]
        errors = []
        for future in futures:
            with pytest.raises(WorkerLost) as caught:  # never TaskDeadLettered, whatever arrives first
                future.result(timeout=180)
            errors.append(caught.value)
        tasks = [client.get_task(future.task_id) for future in futures]
    lost_runs = {task["details"]["attempts"] for task in tasks}
    assert lost_runs == {2}  # the endpoint's default: one retry after a lost run
    for error, task in zip(errors, tasks, strict=True):
        assert task["error"]["code"] == "WORKER_LOST"
        assert "killed by signal 9 (SIGKILL)" in str(error)
        assert "gave up after 2 lost runs" in str(error)
        assert "code None" not in str(error)
