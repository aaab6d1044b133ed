"""taskfabric on its own virtual host: `taskfabric broker up` (a real private node, started by the
real command) creates and names a dedicated vhost, and the forwarder's endpoint users get
permissions there only: not on `/`, not on any other vhost."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from taskfabric.broker_config import DEFAULT_VHOST, ManagementClient, RabbitNode, new_queue_secret, vhost_of
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.settings import ForwarderSettings


def _broker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskfabric", "broker", *args], check=False, capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("vhost") / "node"
    yield directory
    RabbitNode(directory).stop()


def _up(node_dir: Path, *extra: str) -> dict[str, Any]:
    done = _broker("up", "--dir", str(node_dir), "--json", *extra)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _connects(url: str) -> bool | str:
    """True when `url` opens a connection, else the broker's refusal in words."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPConnectionError as exc:
        return repr(exc)
    connection.close()
    return True


def _with_vhost(url: str, vhost: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{vhost.replace('/', '%2F')}"


def test_broker_up_serves_taskfabric_on_its_own_vhost_and_endpoint_users_get_only_that(node_dir: Path) -> None:
    default = _up(node_dir)
    assert default["vhost"] == DEFAULT_VHOST == vhost_of(default["amqp_url"])
    assert default["amqp_url"].endswith(f"/{DEFAULT_VHOST}")

    custom = _up(node_dir, "--vhost", "lab-1")  # the running node: the vhost is added, the URLs name it
    assert custom["vhost"] == "lab-1" and custom["amqp_url"].endswith("/lab-1")
    assert _up(node_dir)["vhost"] == "lab-1"  # kept for the next start
    bad = _broker("up", "--dir", str(node_dir), "--vhost", "no spaces/here")
    assert bad.returncode == 2 and "invalid vhost" in bad.stderr and "Traceback" not in bad.stderr

    # the forwarder's own code path: settings from the URLs `broker up` printed
    settings = ForwarderSettings(amqp_url=custom["amqp_url"], management_url=custom["management_url"])
    link = AdminBrokerLink(settings)
    link.start()
    try:
        endpoint_id = uuid.uuid4()
        queues = link.queues_of(endpoint_id, new_queue_secret())
        link.declare_endpoint_queues(queues)
        username = f"ep-{endpoint_id}"
        url = settings.endpoint_broker_url(username, link.issue_credentials(endpoint_id, queues, revoke_old=False))
        assert vhost_of(url) == "lab-1"

        with ManagementClient(custom["management_url"]) as management:
            assert management.vhost_permissions_of(username) == ["lab-1"]
        assert _connects(url) is True
        for elsewhere in ("/", DEFAULT_VHOST):
            refused = _connects(_with_vhost(url, elsewhere))
            assert refused is not True and "refused" in str(refused).lower(), (elsewhere, refused)
        link.revoke_credentials(endpoint_id)
        link.delete_endpoint_queues(queues)
    finally:
        link.close()
