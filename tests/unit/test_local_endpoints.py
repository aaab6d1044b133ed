"""Endpoint folders talk to the forwarder through `ForwarderEndpoints` (the client library in
production): registration saves the broker credentials it answers; deletion tells it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from taskfabric.broker_config import broker_username
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import (
    ForwarderEndpoints,
    LocalEndpoint,
    configure_endpoint,
    delete_endpoint,
    register_endpoint,
)
from taskfabric.protocol import BrokerAccess, EndpointRegistered, render


class FakeForwarder:
    def __init__(self) -> None:
        self.registered: list[tuple[str, object, dict[str, Any] | None]] = []
        self.deleted: list[str] = []
        self.endpoint_id = uuid.uuid4()

    def register_endpoint(
        self,
        name: str,
        *,
        endpoint_id: uuid.UUID | str | None = None,
        metadata: dict[str, Any] | None = None,
        allowed_functions: Any = None,
    ) -> dict[str, Any]:
        self.registered.append((name, endpoint_id, metadata))
        broker = BrokerAccess(
            amqp_url="amqp://ep:pw@broker:5672/%2F",
            username=broker_username(self.endpoint_id),
            task_queue="t",
            result_queue="r",
            results_exchange="x.results",
            dead_letter_exchange="x.dead-letter",
        )
        return render(EndpointRegistered(endpoint_id=self.endpoint_id, name=name, broker=broker))

    def delete_endpoint(self, endpoint_id: uuid.UUID | str) -> None:
        self.deleted.append(str(endpoint_id))

    def get_endpoint_status(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]:
        return {}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path))
    return tmp_path


def test_registration_saves_the_answer_and_reregistration_keeps_the_id() -> None:
    forwarder = FakeForwarder()
    client: ForwarderEndpoints = forwarder
    configure_endpoint("lab", settings={"scaling": {"workers_per_node": 1}})
    connection = register_endpoint("lab", client)
    assert connection.endpoint_id == forwarder.endpoint_id
    assert EndpointConnection.load(LocalEndpoint("lab").paths.connection) == connection
    register_endpoint("lab", client)
    (first_name, first_id, metadata), (_, second_id, _) = forwarder.registered
    assert (first_name, first_id, second_id) == ("lab", None, str(forwarder.endpoint_id))
    assert metadata is not None and metadata["display_name"] == "lab"


def test_deleting_a_registered_endpoint_tells_the_forwarder_and_removes_its_folder() -> None:
    forwarder = FakeForwarder()
    configure_endpoint("lab", settings={"scaling": {"workers_per_node": 1}})
    register_endpoint("lab", forwarder)
    delete_endpoint("lab", forwarder)
    assert forwarder.deleted == [str(forwarder.endpoint_id)]
    assert not LocalEndpoint("lab").exists
