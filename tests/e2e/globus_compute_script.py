"""An unmodified Globus Compute SDK script, run by tests/e2e/test_globus_compute.py with the Python of
a virtual environment holding only globus-compute-sdk==4.19.0 (never taskfabric).

    python globus_compute_script.py full ENDPOINT_ID     every scenario (needs TF_CLI: the taskfabric CLI)
    python globus_compute_script.py quick ENDPOINT_ID    a short pass (through `globus-compute proxy`)
    python globus_compute_script.py reload ENDPOINT_ID TASK_GROUP_ID N   re-attach to a task group

Each step prints one `ok <step>` line; any failure raises (non-zero exit with a traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from globus_compute_sdk import Client, Executor
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.client import TaskPending

DEADLINE_S = 60.0


def square(x):
    return x * x


def fail_remotely(text):
    raise ValueError(f"remote failure: {text}")


def slow_add(a, b, delay_s=1.0):
    import time

    time.sleep(delay_s)
    return a + b


def wait_result(client, task_id, *, seen_pending=None):
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return client.get_result(task_id)
        except TaskPending:
            if seen_pending is not None:
                seen_pending.append(task_id)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def executor_many(client, endpoint_id, count):
    with Executor(endpoint_id=endpoint_id, client=client) as executor:
        futures = [executor.submit(square, i) for i in range(count)]
        results = [future.result(timeout=DEADLINE_S) for future in futures]
    assert results == [i * i for i in range(count)], results[:10]
    print(f"ok executor {count}", flush=True)


def executor_exception(client, endpoint_id):
    with Executor(endpoint_id=endpoint_id, client=client) as executor:
        future = executor.submit(fail_remotely, "xyzzy")
        try:
            future.result(timeout=DEADLINE_S)
        except TaskExecutionFailed as exc:
            text = str(exc)
            assert "ValueError" in text and "remote failure: xyzzy" in text, text
            assert "fail_remotely" in text, text  # the remote traceback
        else:
            raise AssertionError("no TaskExecutionFailed")
    print("ok exception", flush=True)


def client_run(client, endpoint_id):
    function_id = client.register_function(slow_add)
    assert client.get_function(function_id)["function_name"] == "slow_add"
    task_id = client.run(2, 3, endpoint_id=endpoint_id, function_id=function_id, delay_s=1.0)
    pending = []
    assert wait_result(client, task_id, seen_pending=pending) == 5
    assert pending, "TaskPending was never raised"
    failing = client.register_function(fail_remotely)
    task_id = client.run("via run", endpoint_id=endpoint_id, function_id=failing)
    try:
        wait_result(client, task_id)
    except TaskExecutionFailed as exc:
        assert "remote failure: via run" in str(exc), str(exc)
    else:
        raise AssertionError("no TaskExecutionFailed from get_result")
    print("ok run", flush=True)
    return function_id


def batch(client, endpoint_id, function_id):
    batch = client.create_batch()
    for i in range(5):
        batch.add(function_id, args=(i, 10), kwargs={"delay_s": 0.0})
    answer = client.batch_run(endpoint_id, batch)
    task_ids = [task_id for ids in answer["tasks"].values() for task_id in ids]
    assert len(task_ids) == 5, answer
    deadline = time.monotonic() + DEADLINE_S
    while True:
        results = client.get_batch_result(task_ids)
        if all(not results[task_id]["pending"] for task_id in task_ids):
            break
        assert time.monotonic() < deadline, results
        time.sleep(0.2)
    assert [results[task_id]["result"] for task_id in task_ids] == [i + 10 for i in range(5)]
    print("ok batch", flush=True)


def endpoint_status(client, endpoint_id, expected="online"):
    status = client.get_endpoint_status(endpoint_id)
    assert status["status"] == expected, status
    endpoints = client.get_endpoints()
    assert any(row["uuid"] == endpoint_id for row in endpoints), endpoints
    print("ok status", flush=True)


def taskfabric(*args):
    command = [*json.loads(os.environ["TF_CLI"]), *args]
    subprocess.run(command, check=True, timeout=120, capture_output=True)


def offline_endpoint(client, endpoint_id):
    """A task submitted while the endpoint is stopped waits, and completes once it starts."""
    taskfabric("endpoint", "stop", "local")
    with Executor(endpoint_id=endpoint_id, client=client) as executor:
        future = executor.submit(square, 12)
        deadline = time.monotonic() + DEADLINE_S
        while future.task_id is None:  # set once the service accepted it
            assert time.monotonic() < deadline, "the task was never accepted"
            time.sleep(0.05)
        assert client.get_task(future.task_id)["status"] == "waiting-for-ep"
        assert not future.done(), "the task finished while its endpoint was stopped"
        taskfabric("endpoint", "start", "local", "--detach")
        assert future.result(timeout=DEADLINE_S) == 144
    print("ok offline", flush=True)


def reload_from_new_process(endpoint_id):
    # a group of its own: the SDK's executors share one task group per process otherwise
    with Executor(endpoint_id=endpoint_id, task_group_id=uuid.uuid4()) as executor:
        futures = [executor.submit(square, i) for i in range(20)]
        assert [future.result(timeout=DEADLINE_S) for future in futures] == [i * i for i in range(20)]
        group = str(executor.task_group_id)
    done = subprocess.run(
        [sys.executable, __file__, "reload", endpoint_id, group, "20"],
        check=False,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok reloaded 20" in done.stdout, done.stdout
    print("ok reload", flush=True)


def reload(endpoint_id, group, count):
    with Executor(endpoint_id=endpoint_id, task_group_id=group) as executor:
        futures = list(executor.reload_tasks())
        results = sorted(future.result(timeout=DEADLINE_S) for future in futures)
    assert results == sorted(i * i for i in range(count)), results
    print(f"ok reloaded {count}", flush=True)


def main() -> None:
    mode, endpoint_id = sys.argv[1], sys.argv[2]
    if mode == "reload":
        reload(endpoint_id, sys.argv[3], int(sys.argv[4]))
        return
    client = Client()
    endpoint_status(client, endpoint_id)
    if mode == "quick":
        executor_many(client, endpoint_id, 50)
        executor_exception(client, endpoint_id)
        client_run(client, endpoint_id)
        return
    executor_many(client, endpoint_id, 500)
    executor_exception(client, endpoint_id)
    function_id = client_run(client, endpoint_id)
    batch(client, endpoint_id, function_id)
    offline_endpoint(client, endpoint_id)
    reload_from_new_process(endpoint_id)


if __name__ == "__main__":
    main()
