"""/readyz follows the forwarder's broker link: a forwarder on a private RabbitMQ node that this
module stops and starts again answers 503 naming the broker while it is down, 200 after."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskfabric.broker_config import RabbitNode
from taskfabric.exit_codes import RET_ERROR, RET_OK
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import unique_name, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(private_node: RabbitNode) -> RabbitNode:
    """The session's private node (tests/conftest.py), running: these tests stop and kill it."""
    return private_node


@pytest.fixture(scope="module")
def forwarder(node: RabbitNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwarderProcess]:
    info = node.start()
    folder = tmp_path_factory.mktemp("readyfw")
    values = {
        "database_url": f"sqlite:///{folder / 'fw.db'}",
        "amqp_url": info.amqp_url,
        "management_url": info.management_url,
        "topology_prefix": unique_name("ready"),
        "queue_check_period_s": 0,
    }
    with ForwarderProcess(folder / "forwarder", values) as process:
        yield process


def _readiness(url: str) -> tuple[int, dict[str, object]]:
    answer = httpx.get(f"{url}/readyz", timeout=30)
    return answer.status_code, answer.json()


def _status(url: str) -> tuple[int, dict[str, object]]:
    command = [str(Path(sys.executable).parent / "taskfabric"), "forwarder", "status", "--url", url, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, json.loads(done.stdout)


def _broker_connected(url: str) -> float:
    """The `taskfabric_broker_connected` gauge (the forwarder listens on loopback, no token set)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "taskfabric_broker_connected"
    ]
    return value


def test_readyz_names_the_broker_while_it_is_down(node: RabbitNode, forwarder: ForwarderProcess) -> None:
    url = forwarder.url
    assert _readiness(url) == (200, {"ready": True, "checks": {"store": "ok", "broker": "ok"}})
    assert _broker_connected(url) == 1
    node.stop_app()
    try:
        down = wait_until(
            lambda: (answer := _readiness(url))[0] == 503 and answer,
            timeout_s=60,
            interval_s=0.2,
            what="/readyz answering 503 once the broker is down",
        )
        assert down[1] == {"ready": False, "checks": {"store": "ok", "broker": "unavailable"}}
        # the process itself is fine, and says so
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        code, status = _status(url)
        assert code == RET_ERROR
        assert (status["ready"], status["alive"], status["checks"]) == (
            False,
            True,
            {"store": "ok", "broker": "unavailable"},
        )
        assert _broker_connected(url) == 0
    finally:
        node.start_app()
    wait_until(lambda: _readiness(url)[0] == 200, timeout_s=90, interval_s=0.2, what="/readyz answering 200 again")
    assert _readiness(url) == (200, {"ready": True, "checks": {"store": "ok", "broker": "ok"}})
    code, status = _status(url)
    assert (code, status["ready"]) == (RET_OK, True)
