"""Fixtures for the forwarder's integration tests: the real thing, as a subprocess.

One forwarder process per database backend for the session (SQLite in a temporary directory;
PostgreSQL from `postgres_for_tests`), each on its own topology prefix of the session broker.
Tests isolate themselves by creating their own users (`new_user`), endpoints and functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfabric.broker_config import ManagementClient, vhost_of
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.blobs import BlobStore, open_blob_store
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi, ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

#: small limits and quick periods, so the tests that exercise them stay fast
TEST_SETTINGS: dict[str, Any] = {
    "max_payload_bytes": 256 * 1024,
    "max_function_bytes": 256 * 1024,
    "max_request_bytes": 2 * 1024 * 1024,
    "max_batch_tasks": 2000,
    "publish_batch_tasks": 100,
    "delivery_limit": 2,
    "status_period_s": 0.5,
    "endpoint_offline_after_s": 2.0,
    "status_flush_s": 0.2,
    "endpoint_sync_period_s": 1.0,
    "stream_poll_s": 1.0,
    "confirm_timeout_s": 5.0,
    "limits": {"function_body_bytes": 512 * 1024, "submit_body_bytes": 2 * 1024 * 1024},
}


@dataclasses.dataclass
class RunningForwarder:
    """A forwarder process and what tests need around it."""

    backend: str
    process: ForwarderProcess
    settings: ForwarderSettings
    broker: BrokerUnderTest

    @property
    def url(self) -> str:
        return self.process.url

    def new_user(self, stem: str = "user") -> ForwarderApi:
        name = unique_name(stem)
        create_user(self.settings, name)
        return ForwarderApi(self.url, create_token(self.settings, name), username=name)

    def store(self) -> Store:
        return Store.open(self.settings.store_url)

    def management(self) -> ManagementClient:
        assert self.broker.management_url
        return ManagementClient(self.broker.management_url, vhost=vhost_of(self.broker.amqp_url))


class ForwarderPool:
    """Starts at most one forwarder per backend, on first use; stops them at the end."""

    def __init__(self, broker: BrokerUnderTest, directory: Path, postgres_url: Callable[[], str]) -> None:
        self._broker = broker
        self._directory = directory
        self._postgres_url = postgres_url
        self._running: dict[str, RunningForwarder] = {}
        self._stack = contextlib.ExitStack()

    def get(self, backend: str) -> RunningForwarder:
        if backend not in self._running:
            self._running[backend] = self._start(backend)
        return self._running[backend]

    def _start(self, backend: str) -> RunningForwarder:
        folder = self._directory / backend
        is_postgres = backend == "postgres"
        queue_type = "classic" if backend == "sqlite-classic" else "quorum"
        database_url = self._postgres_url() if is_postgres else f"sqlite:///{folder / 'forwarder.db'}"
        assert self._broker.management_url, "the forwarder needs the broker's management API"
        values = {
            **TEST_SETTINGS,
            "database_url": database_url,
            "amqp_url": self._broker.amqp_url,
            "management_url": self._broker.management_url,
            "topology_prefix": unique_name(f"fw-{backend}"),
            "queue_type": queue_type,
        }
        process = ForwarderProcess(folder, values)
        self._stack.enter_context(process)
        return RunningForwarder(backend, process, ForwarderSettings.from_mapping(values), self._broker)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def forwarder_pool(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ForwarderPool]:
    pool = ForwarderPool(broker, tmp_path_factory.mktemp("forwarders"), lambda: request.getfixturevalue("postgres_url"))
    yield pool
    pool.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A `Store` (schema created) on SQLite and on PostgreSQL."""
    url = (
        request.getfixturevalue("postgres_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'store.db'}"
    )
    with Store.open(url) as opened:
        yield opened


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def forwarder(request: pytest.FixtureRequest, forwarder_pool: ForwarderPool) -> RunningForwarder:
    """The forwarder on each database backend (core tests run on both)."""
    return forwarder_pool.get(request.param)


@pytest.fixture(scope="session")
def sqlite_forwarder(forwarder_pool: ForwarderPool) -> RunningForwarder:
    """The forwarder on SQLite only."""
    return forwarder_pool.get("sqlite")


@pytest.fixture(scope="session")
def classic_forwarder(forwarder_pool: ForwarderPool) -> RunningForwarder:
    """The forwarder on SQLite with `queue_type: classic`."""
    return forwarder_pool.get("sqlite-classic")


@pytest.fixture
def users() -> Iterator[Callable[[RunningForwarder], ForwarderApi]]:
    """Make API sessions of fresh users; closed after the test."""
    made: list[ForwarderApi] = []

    def make(running: RunningForwarder) -> ForwarderApi:
        api = running.new_user()
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.fixture
def fake_endpoints() -> Iterator[Callable[..., FakeEndpoint]]:
    """Start fake endpoints (broker side of an agent); closed after the test."""
    made: list[FakeEndpoint] = []

    def make(registration: dict[str, Any], **kwargs: Any) -> FakeEndpoint:
        endpoint = FakeEndpoint(registration, **kwargs).start()
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        endpoint.close()


# --- an S3-compatible server for the blob store (issue 15) -------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server on a free port (moto's server mode, from PyPI: no real S3 server
    installs from the package registries here), with AWS test credentials in the environment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("wb")
    server = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", "test")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    try:
        wait_until(lambda: _listening(port), timeout_s=30, interval_s=0.1, what="moto_server listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        patch.undo()
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.fixture
def s3_blobs(s3_endpoint: str) -> BlobStore:
    """A blob store in a fresh bucket of the S3-compatible server."""
    import boto3

    bucket = f"blobs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return open_blob_store(f"s3://{bucket}/results", s3_endpoint_url=s3_endpoint)
