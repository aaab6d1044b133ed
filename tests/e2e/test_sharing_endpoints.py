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


def slow_square(x: int, pause_s: float = 0.0) -> int:
    import time

    time.sleep(pause_s)
    return x * x


def carols_own(x: int) -> int:
    return x + 1


def test_three_users_share_through_a_group_with_limits_functions_and_an_allow_list(fabric: Fabric) -> None:
    """Issue 13's acceptance in one story on a real agent: alice owns an endpoint and a function,
    bob is in alice's group, carol is outside. Group grants reach bob (and stop at once when he
    leaves the group, while his accepted tasks still finish), a grant limit answers 429, each user
    sees only their own tasks while alice sees everyone's, bob runs alice's shared function by id
    but cannot read its body, carol gets 403 until the endpoint is public, and the allow-list
    then refuses carol's own function."""
    endpoint_id = fabric.start_endpoint(unique_name("lab-ep"))
    bob_name, bob_token = fabric.new_user()
    _carol_name, carol_token = fabric.new_user()
    with (
        fabric.client() as alice,
        Client(url=fabric.url, token=bob_token, submit_retry_s=0) as bob,
        Client(url=fabric.url, token=carol_token, submit_retry_s=0) as carol,
    ):
        group_id = alice.create_group(unique_name("lab"))["group_id"]
        alice.add_group_member(group_id, bob_name)
        alice.share_endpoint(endpoint_id, group=group_id, role="submit", max_waiting_tasks=3)
        square = alice.register_function(slow_square, description="squares, slowly")
        alice.share_function(square, group=group_id)

        # bob, through the group: alice's function by id on alice's endpoint; carol: refused
        accepted = [bob.run(x, 3.0, endpoint_id=endpoint_id, function_id=square) for x in (2, 3, 4)]
        with pytest.raises(ServiceError) as limited:  # the grant's max_waiting_tasks
            bob.run(5, endpoint_id=endpoint_id, function_id=square)
        assert limited.value.status == 429 and "max_waiting_tasks" in str(limited.value)
        with pytest.raises(ServiceError) as body:
            bob.get_function(square, include_body=True)
        assert body.value.status == 403
        assert bob.get_function(square)["description"] == "squares, slowly"
        carols = carol.register_function(carols_own)
        with pytest.raises(ServiceError) as stranger:
            carol.run(1, endpoint_id=endpoint_id, function_id=carols)
        assert stranger.value.status == 403
        with pytest.raises(ServiceError) as hidden:
            carol.get_function(square)
        assert hidden.value.status == 404

        # bob leaves the group: his next submit is refused at once, his accepted tasks still run
        alice.remove_group_member(group_id, bob_name)
        with pytest.raises(ServiceError) as revoked:
            bob.run(6, endpoint_id=endpoint_id, function_id=square)
        assert revoked.value.status == 403
        own = alice.run(7, endpoint_id=endpoint_id, function_id=square)
        for task_id in [*accepted, own]:
            wait_until(lambda t=task_id: alice_or_bob(alice, bob, t) == "success", timeout_s=90, what="shared tasks")
        assert [bob.get_result(task_id) for task_id in accepted] == [4, 9, 16]

        # who sees what: bob his own tasks only; alice everyone's, with who submitted each
        assert {task["task_id"] for task in bob.list_tasks(endpoint_id=endpoint_id)} == {str(t) for t in accepted}
        everyone = {
            task["task_id"]: task["submitted_by"] for task in alice.list_tasks(endpoint_id=endpoint_id, all_users=True)
        }
        assert everyone == {**{str(t): bob_name for t in accepted}, str(own): fabric.username}
        with pytest.raises(ServiceError) as not_a_manager:
            list(bob.list_tasks(endpoint_id=endpoint_id, all_users=True))
        assert not_a_manager.value.status == 403

        # public: carol may submit her own function; then the allow-list refuses it (for everyone)
        alice.set_endpoint_public(endpoint_id, True)
        carols_task = carol.run(1, endpoint_id=endpoint_id, function_id=carols)
        wait_until(lambda: carol.get_task(carols_task)["status"] == "success", timeout_s=60, what="carol's task")
        assert carol.get_result(carols_task) == 2
        alice.set_allowed_functions(endpoint_id, [square])
        with pytest.raises(ServiceError) as unlisted:
            carol.run(1, endpoint_id=endpoint_id, function_id=carols)
        assert unlisted.value.status == 403 and "FUNCTION_NOT_ALLOWED" in (unlisted.value.code or "")
        actions = [event["action"] for event in alice.get_endpoint_audit(endpoint_id)]
        assert {"endpoint.access", "endpoint.submit", "endpoint.allowed_functions"} <= set(actions)


def alice_or_bob(alice: Client, bob: Client, task_id: Any) -> str:
    """A task's status as its submitter sees it (alice's own, or bob's)."""
    try:
        return str(alice.get_task(task_id)["status"])
    except ServiceError:
        return str(bob.get_task(task_id)["status"])
