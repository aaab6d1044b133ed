"""Multi-user endpoints, the forwarder's part, on a real forwarder and broker (SQLite: the store
is not the point): a submit to a multi-user endpoint lands in the queue of the submitter's own
user endpoint (one per user and user_endpoint_config), never in the parent's; the parent's control
queue gets a `StartUserEndpoint` whose access reaches that user endpoint's queues only; deleting
the parent deletes its user endpoints and fails their waiting tasks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from taskfabric.errors import BrokerError
from taskfabric.forwarder.testing import ForwarderApi
from taskfabric.forwarder.user_endpoints import MAX_USER_ENDPOINTS_PER_USER
from taskfabric.protocol import StartUserEndpoint, TaskBatch, unpack
from taskfabric.transport import RabbitTransport

Users = Callable[[Any], ForwarderApi]


def submit(api: ForwarderApi, endpoint_id: str, function_id: str, config: object = None) -> Any:
    body: dict[str, Any] = {"tasks": [{"function_id": function_id, "payload": ""}]}
    if config is not None:
        body["user_endpoint_config"] = config
    return api.http.post(f"/v1/endpoints/{endpoint_id}/tasks", json=body)


def commands(rabbit: RabbitTransport, control_queue: str) -> list[StartUserEndpoint]:
    found = []
    while (body := rabbit.take_one(control_queue, timeout_s=5)) is not None:
        message = unpack(body)
        assert isinstance(message, StartUserEndpoint)
        found.append(message)
    return found


def test_multi_user_tasks_go_to_per_user_queues_and_the_parent_gets_start_commands(
    sqlite_forwarder: Any, users: Users, rabbit: RabbitTransport, rabbit_factory: Callable[..., RabbitTransport]
) -> None:
    admin, alice, bob = users(sqlite_forwarder), users(sqlite_forwarder), users(sqlite_forwarder)
    parent = admin.register_endpoint("cluster", metadata={"multi_user": True})
    parent_id = parent["endpoint_id"]
    shared = admin.http.put(f"/v1/endpoints/{parent_id}/access", json={"public": True, "grants": []})
    assert shared.status_code == 200, shared.text
    functions = {user: user.register_function(b"f") for user in (alice, bob)}

    assert submit(alice, parent_id, functions[alice], {"account": "proj42"}).status_code == 201
    assert submit(alice, parent_id, functions[alice], {"account": "proj42"}).status_code == 201
    assert submit(bob, parent_id, functions[bob]).status_code == 201
    refused = submit(bob, parent_id, functions[bob], ["not", "a", "map"])
    assert refused.status_code == 400 and "user_endpoint_config" in refused.text

    assert rabbit.queue_depth(parent["broker"]["task_queue"]) == 0  # the parent consumes no tasks
    started = {command.user: command for command in commands(rabbit, parent["broker"]["control_queue"])}
    assert set(started) == {alice.username, bob.username}
    mine, his = started[alice.username], started[bob.username]
    assert mine.parent_endpoint_id == uuid.UUID(parent_id) and mine.endpoint_id != his.endpoint_id
    assert mine.user_endpoint_config_json == '{"account": "proj42"}'
    assert mine.broker.username == f"ep-{mine.endpoint_id}"
    assert mine.broker.task_queue != parent["broker"]["task_queue"]

    batches = [unpack(body) for body in iter(lambda: rabbit.take_one(mine.broker.task_queue, timeout_s=5), None)]
    assert all(isinstance(batch, TaskBatch) for batch in batches)
    assert {task.user for batch in batches for task in batch.tasks} == {alice.username}
    assert sum(len(batch.tasks) for batch in batches) == 2
    listed = alice.list_tasks()["tasks"]
    assert {task["endpoint_id"] for task in listed} == {str(mine.endpoint_id)}

    # alice's user endpoint credentials reach her queues only
    own = rabbit_factory(mine.broker.amqp_url)
    assert own.queue_depth(mine.broker.task_queue) == 0
    for foreign in (his.broker.task_queue, parent["broker"]["control_queue"], parent["broker"]["task_queue"]):
        with pytest.raises(BrokerError):
            rabbit_factory(mine.broker.amqp_url).consume(foreign, lambda delivery: None, prefetch=1)

    # nobody submits straight to a user endpoint, not even the parent's owner
    direct = submit(admin, str(mine.endpoint_id), admin.register_function(b"f"))
    assert direct.status_code == 403 and "USER_ENDPOINT" in direct.text

    # deleting the parent deletes its user endpoints and fails their waiting tasks
    submit(bob, parent_id, functions[bob])
    assert admin.http.delete(f"/v1/endpoints/{parent_id}").status_code in (200, 204)
    for child in (mine.endpoint_id, his.endpoint_id):
        assert admin.http.get(f"/v1/endpoints/{child}").status_code == 404
    assert {task["status"] for task in bob.list_tasks()["tasks"]} == {"failed"}


def test_multi_user_one_user_has_a_bounded_number_of_user_endpoints(sqlite_forwarder: Any, users: Users) -> None:
    admin, mallory = users(sqlite_forwarder), users(sqlite_forwarder)
    parent_id = admin.register_endpoint("bounded", metadata={"multi_user": True})["endpoint_id"]
    assert admin.http.put(f"/v1/endpoints/{parent_id}/access", json={"public": True, "grants": []}).status_code == 200
    function_id = mallory.register_function(b"f")
    try:
        for index in range(MAX_USER_ENDPOINTS_PER_USER):  # each new config: an endpoint, queues, a process
            assert submit(mallory, parent_id, function_id, {"n": index}).status_code == 201
        refused = submit(mallory, parent_id, function_id, {"n": "one more"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "QUOTA_EXCEEDED", refused.text
        assert "user_endpoint_config" in refused.json()["error"]["message"]
        assert submit(mallory, parent_id, function_id, {"n": 0}).status_code == 201  # a config in use still works
    finally:
        assert admin.http.delete(f"/v1/endpoints/{parent_id}").status_code in (200, 204)
