"""Submissions ride out a forwarder restart: the client retries with the same submission id, and
the retry never makes second tasks (a real forwarder process, stopped and started on its port)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfabric.client import Client
from taskfabric.errors import ServiceError
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name

pytestmark = pytest.mark.slow


def square(x: int) -> int:
    return x * x


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def service(broker: BrokerUnderTest, tmp_path: Path) -> Iterator[tuple[ForwarderProcess, str]]:
    values: dict[str, Any] = {
        "port": _free_port(),
        "database_url": f"sqlite:///{tmp_path / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("retry"),
    }
    settings = ForwarderSettings.from_mapping(values)
    with ForwarderProcess(tmp_path / "forwarder", values) as forwarder:
        create_user(settings, "researcher")
        yield forwarder, create_token(settings, "researcher")


def test_a_submission_waits_for_a_restarting_forwarder(service: tuple[ForwarderProcess, str]) -> None:
    forwarder, token = service
    with Client(url=forwarder.url, token=token, submit_retry_s=60) as client:
        endpoint_id = client.register_endpoint("offline")["endpoint_id"]
        function_id = client.register_function(square)
        forwarder.stop()
        restarter = threading.Timer(3.0, forwarder.start)
        restarter.start()
        try:
            batch = client.create_batch()
            for i in range(50):
                batch.add(function_id, i)
            started = time.monotonic()
            task_ids = client.batch_run(endpoint_id, batch)
            waited_s = time.monotonic() - started
        finally:
            restarter.join()
        assert waited_s > 1.0  # it really waited for the restart
        assert len(set(task_ids)) == 50
        states = client.get_batch_result(task_ids)
        assert len(states) == 50 and all(state["pending"] for state in states.values())


def test_without_retries_a_submission_fails_at_once(service: tuple[ForwarderProcess, str]) -> None:
    forwarder, token = service
    with Client(url=forwarder.url, token=token, submit_retry_s=0) as client:
        endpoint_id = client.register_endpoint("offline")["endpoint_id"]
        function_id = client.register_function(square)
        forwarder.stop()
        with pytest.raises(ServiceError) as refused:
            client.run(3, endpoint_id=endpoint_id, function_id=function_id)
        assert refused.value.status == 0 and "cannot reach the forwarder" in str(refused.value)
