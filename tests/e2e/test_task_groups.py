"""Task listings and task groups as a researcher uses them, end to end (real forwarder, broker,
endpoint agent with managers and workers; SQLite and PostgreSQL): `Client.list_tasks` paging,
`Client.get_task_group`, and re-attaching to a whole task group from a new process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from taskfabric.cli import main
from taskfabric.client import Client, Executor
from taskfabric.client.config import ClientConfig
from taskfabric.exit_codes import RET_OK
from taskfabric.protocol import TaskStatus
from taskfabric.testing import wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow


def square(x: int) -> int:
    return x * x


def fails(message: str) -> None:
    raise ValueError(message)


def wait_for_file(path: str, value: int) -> int:
    """Returns `value` once `path` exists (the test opens this gate); gives up after two minutes."""
    import os
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def endpoint(fabric: Fabric) -> str:
    return fabric.start_endpoint()


def test_list_tasks_pages_through_every_task_newest_first(fabric: Fabric, endpoint: str) -> None:
    group_id = uuid.uuid4()  # the listing is narrowed to this test's tasks by their group
    with fabric.client() as client:
        function_id = client.register_function(square)
        submitted: list[uuid.UUID] = []
        for start in range(0, 25, 5):  # five requests: five creation times
            batch = client.create_batch(task_group_id=group_id)
            for i in range(start, start + 5):
                batch.add(function_id, i)
            submitted += client.batch_run(endpoint, batch)

        pages = []
        page = client.list_tasks_page(group_id=group_id, limit=10)
        pages.append(page.tasks)
        while page.next_cursor is not None and len(pages) < 10:
            page = client.list_tasks_page(group_id=group_id, limit=10, cursor=page.next_cursor)
            pages.append(page.tasks)
        assert [len(tasks) for tasks in pages] == [10, 10, 5] and page.next_cursor is None
        paged = [task["task_id"] for tasks in pages for task in tasks]
        assert len(set(paged)) == 25 and {uuid.UUID(task_id) for task_id in paged} == set(submitted)

        # the generator follows the cursors itself, and stops at `limit`
        streamed = list(client.list_tasks(group_id=group_id, page_size=10))
        assert [task["task_id"] for task in streamed] == paged
        keys = [(task["created_at"], uuid.UUID(task["task_id"])) for task in streamed]
        assert keys == sorted(keys, reverse=True)
        assert [task["task_id"] for task in client.list_tasks(group_id=group_id, limit=7, page_size=3)] == paged[:7]
        assert [task["task_id"] for task in client.list_tasks(limit=3)] == paged[:3]  # the newest of all

        wait_until(
            lambda: all(task["status"] == TaskStatus.SUCCESS for task in client.list_tasks(group_id=group_id)),
            timeout_s=90,
            what="every task finished",
        )
        done = client.list_tasks(group_id=group_id, status=TaskStatus.SUCCESS, endpoint_id=endpoint)
        assert len(list(done)) == 25
        assert list(client.list_tasks(group_id=group_id, status=TaskStatus.FAILED)) == []
        assert list(client.list_tasks(group_id=group_id, function_id=uuid.uuid4())) == []
        assert list(client.list_tasks(since=time.time() + 3600)) == []
        _name, token = fabric.new_user()
        with fabric.client(token=token) as other:
            assert list(other.list_tasks()) == []


REATTACH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from taskfabric.client import Client, Executor

    url, token, endpoint_id, group_id = sys.argv[1:5]
    with Client(url=url, token=token) as client:
        with Executor(endpoint_id, client=client, task_group_id=group_id) as executor:
            assert str(executor.task_group_id) == group_id
            futures = executor.reload_tasks()
            attached = [str(future.task_id) for future in futures]
            done_at_once = [future.done() for future in futures]
            print(json.dumps({"attached": attached, "done_at_once": done_at_once}), flush=True)
            outcomes = {}
            for future in futures:
                try:
                    outcomes[str(future.task_id)] = {"value": future.result(timeout=120)}
                except Exception as exc:
                    outcomes[str(future.task_id)] = {"error": type(exc).__name__, "message": str(exc)}
            print(json.dumps({"outcomes": outcomes}), flush=True)
    """
)


def test_a_new_process_reattaches_to_every_task_of_a_group(fabric: Fabric, endpoint: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        try:
            _reattach_from_a_new_process(fabric, endpoint, client, executor, gate)
        finally:
            gate.touch()  # never leave gated tasks holding the endpoint's workers


def _reattach_from_a_new_process(fabric: Fabric, endpoint: str, client: Client, executor: Executor, gate: Path) -> None:
    group_id = executor.task_group_id
    assert isinstance(group_id, uuid.UUID)
    finished = [executor.submit(square, i) for i in range(4)] + [executor.submit(fails, "no good")]
    for future in finished[:4]:
        future.result(timeout=60)
    with pytest.raises(ValueError):
        finished[4].result(timeout=60)
    gated = [executor.submit(wait_for_file, str(gate), 100 + i) for i in range(2)]
    wait_until(lambda: all(future.task_id is not None for future in gated), what="gated tasks accepted")
    finished_ids = {str(future.task_id) for future in finished}
    gated_ids = {str(future.task_id) for future in gated}

    # the group as the service lists it, oldest first: the finished tasks, then the pending ones
    # (tasks of one request share a creation time: within it the order is the task ids')
    group = client.get_task_group(group_id)
    listed = [task["task_id"] for task in group]
    assert set(listed[:5]) == finished_ids and set(listed[5:]) == gated_ids
    statuses = {task["task_id"]: TaskStatus(task["status"]) for task in group}
    assert sorted(statuses[task_id] for task_id in finished_ids) == sorted(
        [TaskStatus.SUCCESS] * 4 + [TaskStatus.FAILED]
    )
    assert all(statuses[task_id].pending for task_id in gated_ids)
    assert {task["task_group_id"] for task in group} == {str(group_id)}

    with subprocess.Popen(
        [sys.executable, "-c", REATTACH_SCRIPT, fabric.url, fabric.token, endpoint, str(group_id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            reloaded = json.loads(process.stdout.readline())
            assert reloaded["attached"] == listed  # every task of the group, from a process that submitted none
            assert reloaded["done_at_once"] == [True] * 5 + [False] * 2  # finished ones at once
            gate.touch()  # now the pending ones may finish
            outcomes_line = process.stdout.readline()
            assert process.wait(timeout=120) == 0, process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
    outcomes = json.loads(outcomes_line)["outcomes"]
    assert [outcomes[str(future.task_id)] for future in finished[:4]] == [{"value": i * i} for i in range(4)]
    failure = outcomes[str(finished[4].task_id)]
    assert failure["error"] == "ValueError" and "no good" in failure["message"]
    assert [outcomes[str(future.task_id)] for future in gated] == [{"value": 100}, {"value": 101}]
    assert [future.result(timeout=60) for future in gated] == [100, 101]

    # the task group is the caller's only: another user sees none of it
    _name, token = fabric.new_user()
    with fabric.client(token=token) as other:
        assert other.get_task_group(group_id) == []
        assert list(other.list_tasks(group_id=group_id)) == []


def test_an_executor_given_a_group_adds_to_it_and_reload_keeps_its_own_futures(
    fabric: Fabric, endpoint: str, tmp_path: Path
) -> None:
    group_id, gate = uuid.uuid4(), tmp_path / "gate"
    with fabric.client() as client:
        with Executor(endpoint, client=client, task_group_id=group_id) as first:
            earlier = first.submit(square, 3)
            assert earlier.result(timeout=60) == 9
        with Executor(endpoint, client=client, task_group_id=str(group_id)) as second:
            try:
                assert second.task_group_id == group_id
                later = second.submit(wait_for_file, str(gate), 16)
                wait_until(lambda: later.task_id is not None, what="the task accepted")
                futures = second.reload_tasks()
                assert [future.task_id for future in futures] == [earlier.task_id, later.task_id]
                assert futures[0].done() and futures[0].result() == 9  # finished: resolved at once
                assert futures[1] is later  # a task this Executor awaits keeps its one future
            finally:
                gate.touch()
            assert later.result(timeout=60) == 16
        with Executor(endpoint, client=client) as fresh:
            assert isinstance(fresh.task_group_id, uuid.UUID) and fresh.task_group_id != group_id  # a new group


def test_reloading_tasks_whose_results_this_executor_already_received(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        futures = [executor.submit(square, i) for i in range(3)]
        assert [future.result(timeout=60) for future in futures] == [0, 1, 4]
        expected = {future.task_id: future.result() for future in futures}
        for _ in range(2):  # its stream sent these results already: they must not be awaited again
            reloaded = executor.reload_tasks()
            assert {future.task_id: future.result(timeout=30) for future in reloaded} == expected


def test_task_list_and_task_result_on_the_command_line(fabric: Fabric, endpoint: str) -> None:
    ClientConfig(url=fabric.url, token=fabric.token).save()
    with Client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit(square, 9)
        assert future.result(timeout=60) == 81
        failed = executor.submit(fails, "broken")
        with pytest.raises(ValueError):
            failed.result(timeout=60)
    runner = CliRunner()

    group = ["--group", str(executor.task_group_id)]
    listed = runner.invoke(main, ["task", "list", *group, "--json"], catch_exceptions=False)
    assert listed.exit_code == RET_OK, listed.output
    tasks = json.loads(listed.stdout)
    assert [task["task_id"] for task in tasks] == [str(failed.task_id), str(future.task_id)]
    assert {task["task_group_id"] for task in tasks} == {str(executor.task_group_id)}
    newest = json.loads(runner.invoke(main, ["task", "list", "--limit", "2", "--json"]).stdout)
    assert newest == tasks  # this test's tasks are the newest of all
    only_failed = json.loads(runner.invoke(main, ["task", "list", *group, "--status", "failed", "--json"]).stdout)
    assert [task["task_id"] for task in only_failed] == [str(failed.task_id)]
    first = json.loads(runner.invoke(main, ["task", "list", *group, "--limit", "1", "--json"]).stdout)
    assert [task["task_id"] for task in first] == [str(failed.task_id)]
    recent = json.loads(runner.invoke(main, ["task", "list", *group, "--since", "1d", "--json"]).stdout)
    assert recent == tasks
    table = runner.invoke(main, ["task", "list", *group])
    assert table.exit_code == RET_OK and str(future.task_id) in table.stdout and "failed" in table.stdout
    bad = runner.invoke(main, ["task", "list", "--endpoint", "not-a-uuid"])
    assert bad.exit_code != RET_OK and "endpoint_id" in bad.output

    shown = runner.invoke(main, ["task", "result", str(future.task_id), "--json"])
    assert shown.exit_code == RET_OK
    assert json.loads(shown.stdout) == {
        "task_id": str(future.task_id),
        "status": TaskStatus.SUCCESS.value,
        "result": 81,
        "result_repr": "81",
    }
    refused = runner.invoke(main, ["task", "result", str(failed.task_id), "--json"])
    assert refused.exit_code != RET_OK
    document = json.loads(refused.stdout)
    assert document["status"] == TaskStatus.FAILED.value and document["error"]["type"] == "ValueError"
    assert "broken" in document["error"]["message"]
    whoami = json.loads(runner.invoke(main, ["whoami", "--json"]).stdout)
    assert whoami["username"] == fabric.username and whoami["url"] == fabric.url
