"""An endpoint's allow-list end to end: a real forwarder, broker, agent, manager and workers.

The endpoint's config.yaml lists one function. The listed function runs; the forwarder refuses
another at submit (403 FUNCTION_NOT_ALLOWED); and a task for the other function published straight
to the endpoint's task queue with the endpoint's own broker credentials (as if it had slipped past
the forwarder) is answered FUNCTION_NOT_ALLOWED by the agent and never runs: the function would
write a marker file, and the file never appears."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskfabric.client import Executor, FunctionNotAllowed, PermissionDenied
from taskfabric.client.serialization import CLIENT_PYTHON, serialize_arguments, serialize_function
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import LocalEndpoint
from taskfabric.forwarder.records import NewTask
from taskfabric.forwarder.store import Store
from taskfabric.protocol import FunctionBody, Task, TaskBatch, pack
from taskfabric.testing import unique_name, wait_until
from taskfabric.transport import OutgoingMessage, RabbitTransport

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow


def double(x: int) -> int:
    return 2 * x


def write_marker(path: str) -> str:
    Path(path).write_text("ran")
    return "ran"


def _store_task(
    fabric: Fabric, *, owner_id: str, endpoint_id: str, function_id: uuid.UUID, payload: bytes
) -> uuid.UUID:
    """A task row for the forged message (so that its answer has a task to land on)."""
    task_id = uuid.uuid4()
    with Store.open(fabric.settings.store_url) as store:
        store.tasks.insert(
            owner_id=uuid.UUID(owner_id),
            endpoint_id=uuid.UUID(endpoint_id),
            client_python=CLIENT_PYTHON,
            new_tasks=[NewTask(task_id=task_id, function_id=function_id, payload=payload)],
            created_at=time.time(),
        )
    return task_id


def _publish_as_endpoint(connection: EndpointConnection, batch: TaskBatch) -> None:
    """Publish a task message to the endpoint's own task queue with its own broker credentials."""
    assert connection.tasks_exchange is not None
    transport = RabbitTransport(connection.amqp_url, connection_name="forger")
    transport.start()
    try:
        message = OutgoingMessage(
            exchange=connection.tasks_exchange,
            routing_key=connection.task_queue,
            body=pack(batch),
            user_id=connection.username,
            message_id=str(uuid.uuid4()),
        )
        transport.publish(message).result(timeout=15)
    finally:
        transport.close()


def test_the_agent_refuses_a_forged_task_for_an_unlisted_function_and_never_runs_it(
    fabric: Fabric, tmp_path: Path
) -> None:
    marker = tmp_path / "forged-task-ran"
    with fabric.client() as client:
        listed = client.register_function(double)
        unlisted = client.register_function(write_marker)
        name = unique_name("locked")
        endpoint_id = fabric.start_endpoint(name, allowed_functions=[str(listed)])
        assert client.get_allowed_functions(endpoint_id) == [str(listed)]

        with Executor(endpoint_id, client=client) as executor:
            assert executor.submit_to_registered_function(listed, (21,)).result(timeout=60) == 42
        with pytest.raises(PermissionDenied, match="FUNCTION_NOT_ALLOWED"):
            client.run(str(marker), endpoint_id=endpoint_id, function_id=unlisted)

        payload = serialize_arguments((str(marker),), {})
        task_id = _store_task(
            fabric,
            owner_id=client.whoami()["user_id"],
            endpoint_id=endpoint_id,
            function_id=unlisted,
            payload=payload,
        )
        forged = TaskBatch(
            tasks=[Task(task_id=task_id, function_id=unlisted, payload=payload, user=fabric.username)],
            functions=[FunctionBody(function_id=unlisted, body=serialize_function(write_marker))],
            client_python=CLIENT_PYTHON,
        )
        _publish_as_endpoint(EndpointConnection.load(LocalEndpoint(name).paths.connection), forged)

        wait_until(
            lambda: client.get_task(task_id)["status"] in ("success", "failed"), timeout_s=60, what="the agent's answer"
        )
        info = client.get_task(task_id)
        assert info["status"] == "failed"
        assert info["error"]["code"] == "FUNCTION_NOT_ALLOWED"
        assert str(unlisted) in info["error"]["message"]
        with pytest.raises(FunctionNotAllowed):
            client.get_result(task_id)
        # the listed function still runs after it: the agent refused one task, nothing else
        with Executor(endpoint_id, client=client) as executor:
            assert executor.submit_to_registered_function(listed, (5,)).result(timeout=60) == 10
    assert not marker.exists()
