"""End-to-end fixtures: a whole fabric of real processes — the session's RabbitMQ, a forwarder
subprocess (on SQLite or PostgreSQL), endpoint agents started the way `taskfabric endpoint start`
does, and clients talking HTTP + WebSocket to the forwarder."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfabric.client import Client
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

FORWARDER_SETTINGS: dict[str, Any] = {
    "status_period_s": 0.5,
    "endpoint_offline_after_s": 3.0,
    "status_flush_s": 0.2,
    "confirm_timeout_s": 10.0,
    "max_payload_bytes": 1024 * 1024,
    # below the Executor's batch size: its batches must be split (the 10,000-task test does)
    "max_batch_tasks": 3000,
}

ENDPOINT_SETTINGS: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "drain_timeout_s": 20.0,
    "scaling": {"workers_per_node": 2, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


@dataclasses.dataclass
class Fabric:
    """A forwarder with a user, and the endpoints started on it."""

    backend: str
    forwarder: ForwarderProcess
    settings: ForwarderSettings
    home: Path
    token: str
    username: str
    endpoints: list[str] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return self.forwarder.url

    def client(self, token: str | None = None) -> Client:
        return Client(url=self.url, token=token or self.token)

    def new_user(self) -> tuple[str, str]:
        """A fresh user of the same service: (name, token)."""
        name = unique_name("user")
        create_user(self.settings, name)
        return name, create_token(self.settings, name)

    def start_endpoint(self, name: str | None = None, **overrides: Any) -> str:
        """Configure, register and start an endpoint; returns its id once it is online."""
        name = name or unique_name("ep")
        if not LocalEndpoint(name).exists:
            configure_endpoint(name, settings={**ENDPOINT_SETTINGS, **overrides})
            self.endpoints.append(name)
        with self.client() as client:
            connection = register_endpoint(name, client)
            start_endpoint(name, detach=True)
            self.wait_online(client, str(connection.endpoint_id))
        return str(connection.endpoint_id)

    @staticmethod
    def wait_online(client: Client, endpoint_id: str) -> None:
        wait_until(
            lambda: (s := client.get_endpoint_status(endpoint_id))["status"] == "online" and s.get("workers"),
            timeout_s=60,
            interval_s=0.1,
            what=f"endpoint {endpoint_id} online with workers",
        )

    def stop_endpoint(self, name: str) -> None:
        stop_endpoint(name, timeout_s=60)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fabric(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fabric]:
    """A fabric per database backend: the same end-to-end tests run on SQLite and PostgreSQL."""
    assert broker.management_url, "end-to-end tests need the broker's management API"
    backend = request.param
    folder = tmp_path_factory.mktemp(f"fabric-{backend}")
    database_url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{folder / 'fw.db'}"
    values = {
        **FORWARDER_SETTINGS,
        "database_url": database_url,
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name(f"e2e-{backend}"),
    }
    home = folder / "home"
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(home))  # endpoint folders, client config: private to this fabric
    settings = ForwarderSettings.from_mapping(values)
    username = unique_name("researcher")
    with ForwarderProcess(folder / "forwarder", values) as forwarder:
        create_user(settings, username)
        running = Fabric(backend, forwarder, settings, home, create_token(settings, username), username)
        try:
            yield running
        finally:
            for name in running.endpoints:
                endpoint = LocalEndpoint(name)
                if endpoint.pid() is not None:
                    stop_endpoint(name, timeout_s=30)
            patch.undo()


@pytest.fixture
def own_forwarder(broker: BrokerUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fabric]:
    """A forwarder of this test alone (the test stops and restarts it), with its own home."""
    assert broker.management_url
    values = {
        **FORWARDER_SETTINGS,
        "database_url": f"sqlite:///{tmp_path / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("e2e-own"),
    }
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path / "home"))
    settings = ForwarderSettings.from_mapping(values)
    username = unique_name("researcher")
    forwarder = ForwarderProcess(tmp_path / "forwarder", values).start()
    try:
        create_user(settings, username)
        own = Fabric("sqlite", forwarder, settings, tmp_path / "home", create_token(settings, username), username)
        yield own
        for name in own.endpoints:
            if LocalEndpoint(name).pid() is not None:
                stop_endpoint(name, timeout_s=30)
    finally:
        forwarder.stop()


#: the metrics token of the `metered_fabric` forwarder
METRICS_TOKEN = "metrics-token-of-the-e2e-tests"


@pytest.fixture(scope="module")
def metered_fabric(broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    """A fabric of the module's own (its metrics count only the module's tasks) whose /metrics
    needs `METRICS_TOKEN` and reads the store at every scrape; SQLite."""
    assert broker.management_url, "end-to-end tests need the broker's management API"
    folder = tmp_path_factory.mktemp("fabric-metered")
    values = {
        **FORWARDER_SETTINGS,
        "database_url": f"sqlite:///{folder / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("e2e-metered"),
        "metrics_token": METRICS_TOKEN,
        "metrics_cache_s": 0,
    }
    home = folder / "home"
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(home))
    settings = ForwarderSettings.from_mapping(values)
    username = unique_name("researcher")
    with ForwarderProcess(folder / "forwarder", values) as forwarder:
        create_user(settings, username)
        running = Fabric("sqlite", forwarder, settings, home, create_token(settings, username), username)
        try:
            yield running
        finally:
            for name in running.endpoints:
                if LocalEndpoint(name).pid() is not None:
                    stop_endpoint(name, timeout_s=30)
            patch.undo()
