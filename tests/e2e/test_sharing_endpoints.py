"""Endpoint sharing end to end (real forwarder, broker, agent, managers and workers; SQLite and
PostgreSQL): alice shares her endpoint with bob from the CLI, bob's task runs on it knowing who
submitted it (`TASKFABRIC_TASK_USER`), bob gets the result, alice's audit lists bob's submission,
once alice unshares, bob's next submit is refused; once she makes it public, it is taken again."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from taskfabric.cli import main
from taskfabric.client import Client, Executor
from taskfabric.client.config import ClientConfig
from taskfabric.errors import ServiceError
from taskfabric.exit_codes import RET_OK
from taskfabric.testing import unique_name, wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow


def whose_task() -> tuple[str, str]:
    import os

    return os.environ.get("TASKFABRIC_TASK_USER", ""), os.environ["TASKFABRIC_TASK_ID"]


def test_bob_runs_a_task_on_alice_s_shared_endpoint_until_she_unshares_it(fabric: Fabric) -> None:
    name = unique_name("shared")
    endpoint_id = fabric.start_endpoint(name)
    bob_name, bob_token = fabric.new_user()
    ClientConfig(url=fabric.url, token=fabric.token).save()  # the CLI is alice
    runner = CliRunner()

    shared = runner.invoke(main, ["endpoint", "share", name, "--user", bob_name, "--max-tasks-per-day", "50"])
    assert shared.exit_code == RET_OK, shared.output
    access = json.loads(runner.invoke(main, ["endpoint", "access", name, "--json"], catch_exceptions=False).stdout)
    assert [(grant["user"], grant["role"], grant["max_tasks_per_day"]) for grant in access["grants"]] == [
        (bob_name, "submit", 50)
    ]

    with Client(url=fabric.url, token=bob_token) as bob:
        listed = {item["endpoint_id"]: item for item in bob.list_endpoints()}
        assert listed[endpoint_id]["role"] == "submit"
        with Executor(endpoint_id, client=bob) as executor:
            future = executor.submit(whose_task)
            user, task_id = future.result(timeout=60)
        assert (user, task_id) == (bob_name, str(future.task_id))
        assert [task["submitted_by"] for task in bob.list_tasks(endpoint_id=endpoint_id)] == [bob_name]

        audit = json.loads(runner.invoke(main, ["endpoint", "audit", name, "--json"], catch_exceptions=False).stdout)
        assert [(event["action"], event["actor"]) for event in audit][:2] == [
            ("endpoint.submit", bob_name),
            ("endpoint.access", fabric.username),
        ]

        unshared = runner.invoke(main, ["endpoint", "unshare", name, "--user", bob_name])
        assert unshared.exit_code == RET_OK, unshared.output
        function_id = bob.register_function(whose_task)
        with pytest.raises(ServiceError) as refused:
            bob.run(endpoint_id=endpoint_id, function_id=function_id)
        assert refused.value.status == 403

        # public: every authenticated user may submit (the endpoint named by id this time)
        opened = runner.invoke(main, ["endpoint", "public", endpoint_id, "on"])
        assert opened.exit_code == RET_OK and "public: yes" in opened.output, opened.output
        public_task = bob.run(endpoint_id=endpoint_id, function_id=function_id)
        wait_until(lambda: bob.get_task(public_task)["status"] == "success", timeout_s=60, what="bob's public task")
        assert bob.get_result(public_task)[0] == bob_name
