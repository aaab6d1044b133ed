"""A broker crash can leave an endpoint's quorum queues leaderless (RabbitMQ 3.10; see
forwarder/queue_health.py). Such a queue is found and rebuilt by the forwarder, the agent notices
its forgotten consumer and subscribes again, and the endpoint works again; another endpoint is not
disturbed meanwhile. Real processes on a private broker node of this module's own.

The damage is made the way the crash leaves it: the queue's Raft server is stopped, so the queue
has members but no leader and no online member.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfabric.broker_config import RabbitNode, new_queue_secret
from taskfabric.client import Client, Executor
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.errors import BrokerError, TaskQueueLost
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import unique_name, wait_until
from taskfabric.testing.queues import make_leaderless

pytestmark = pytest.mark.slow

ENDPOINT_SETTINGS: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "consumer_check_period_s": 0.5,
    "scaling": {"workers_per_node": 2, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


def echo(x: int) -> int:
    return x


@pytest.fixture(scope="module")
def node(private_node: RabbitNode) -> RabbitNode:
    """The session's private node (tests/conftest.py), running: these tests stop and kill it."""
    return private_node


@pytest.fixture
def service(
    node: RabbitNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ForwarderProcess, str]]:
    info = node.start()
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'fw.db'}",
        "amqp_url": info.amqp_url,
        "management_url": info.management_url,
        "topology_prefix": unique_name("rebuild"),
        "queue_type": "quorum",  # a leaderless queue is a quorum queue's fault
        "status_period_s": 0.5,
        "endpoint_offline_after_s": 3.0,
        "confirm_timeout_s": 3.0,
        "queue_check_period_s": 1.0,
        "queue_check_confirmations": 2,
    }
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path / "home"))
    settings = ForwarderSettings.from_mapping(values)
    names: list[str] = []
    with ForwarderProcess(tmp_path / "forwarder", values) as forwarder:
        create_user(settings, "researcher")
        token = create_token(settings, "researcher")
        try:
            yield forwarder, token
        finally:
            for name in names + [p.name for p in (tmp_path / "home" / "endpoints").glob("*")]:
                if LocalEndpoint(name).pid() is not None:
                    stop_endpoint(name, timeout_s=30)


def start(client: Client, name: str) -> EndpointConnection:
    configure_endpoint(name, settings=ENDPOINT_SETTINGS)
    connection = register_endpoint(name, client)
    start_endpoint(name, detach=True)
    wait_until(
        lambda: (s := client.get_endpoint_status(str(connection.endpoint_id)))["status"] == "online" and s["workers"],
        timeout_s=60,
        what=f"endpoint {name} online",
    )
    return connection


def round_trip_s(executor: Executor) -> float:
    started = time.perf_counter()
    assert executor.submit(echo, 1).result(timeout=60) == 1
    return time.perf_counter() - started


def test_a_leaderless_endpoint_queue_is_rebuilt_and_the_endpoint_works_again(
    node: RabbitNode, service: tuple[ForwarderProcess, str]
) -> None:
    forwarder, token = service
    with Client(url=forwarder.url, token=token, submit_retry_s=120) as client:
        victim = start(client, "victim")
        bystander = start(client, "bystander")
        with (
            Executor(str(victim.endpoint_id), client=client) as on_victim,
            Executor(str(bystander.endpoint_id), client=client) as on_bystander,
        ):
            assert [f.result(timeout=60) for f in [on_victim.submit(echo, i) for i in range(5)]] == list(range(5))
            idle = [round_trip_s(on_bystander) for _ in range(5)]

            make_leaderless(node, victim.task_queue)
            make_leaderless(node, victim.result_queue)
            # while it is broken and being rebuilt: submissions to the victim are retried by the client
            futures = [on_victim.submit(echo, i) for i in range(50)]
            during = [round_trip_s(on_bystander) for _ in range(10)]
            assert [f.result(timeout=120) for f in futures] == list(range(50))

    print(
        f"\nbystander round trip: idle median {statistics.median(idle) * 1000:.1f} ms, during the fault "
        f"median {statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms"
    )
    log = forwarder.log_file.read_text()
    closed = [line for line in log.splitlines() if "connection to" in line and "INTERNAL_ERROR" in line]
    print(f"the forwarder's broker connection was closed by the broker {len(closed)} time(s) during the fault")
    rebuilt = [line for line in log.splitlines() if "rebuilt the broken" in line and str(victim.endpoint_id) in line]
    assert any("task" in line for line in rebuilt) and any("result" in line for line in rebuilt), rebuilt
    assert str(bystander.endpoint_id) not in "".join(rebuilt)


def test_tasks_lost_with_a_rebuilt_queue_end_as_a_typed_error(
    node: RabbitNode, service: tuple[ForwarderProcess, str]
) -> None:
    forwarder, token = service
    with Client(url=forwarder.url, token=token) as client:
        victim = start(client, "lost")
        endpoint_id = str(victim.endpoint_id)
        function_id = client.register_function(echo)
        stop_endpoint("lost", timeout_s=60)
        batch = client.create_batch()
        for i in range(20):
            batch.add(function_id, i)
        queued = client.batch_run(endpoint_id, batch)  # accepted: waiting in the task queue
        make_leaderless(node, victim.task_queue)  # ... which the crash destroys with them
        wait_until(
            lambda: "rebuilt the broken task queue" in forwarder.log_file.read_text(), timeout_s=60, what="rebuild"
        )
        after = client.run(99, endpoint_id=endpoint_id, function_id=function_id)  # submitted after the rebuild
        start_endpoint("lost", detach=True)  # the agent reports what it holds (nothing)

        def outcomes() -> dict[Any, dict[str, Any]]:
            return client.get_batch_result([*queued, after])

        wait_until(lambda: not any(o["pending"] for o in outcomes().values()), timeout_s=90, what="every outcome")
        final = outcomes()
        lost = [final[task_id]["exception"] for task_id in queued]
        assert all(isinstance(error, TaskQueueLost) for error in lost), lost
        assert "broker crash" in str(lost[0])
        assert final[after]["result"] == 99  # the rebuilt queue works, and later tasks are not touched


def test_the_registration_probe_proves_queues_and_refuses_a_leaderless_one(node: RabbitNode, tmp_path: Path) -> None:
    info = node.start()
    settings = ForwarderSettings.from_mapping(
        {
            "amqp_url": info.amqp_url,
            "management_url": info.management_url,
            "topology_prefix": unique_name("probe"),
            "queue_type": "quorum",
            "database_url": f"sqlite:///{tmp_path / 'unused.db'}",
            "confirm_timeout_s": 2.0,
        }
    )
    link = AdminBrokerLink(settings)
    link.start()
    try:
        queues = link.queues_of(uuid.uuid4(), new_queue_secret())
        link.declare_endpoint_queues(queues)
        link.probe_endpoint_queues(queues, timeout_s=5)
        assert link.transport.queue_depth(queues.task_queue) == link.transport.queue_depth(queues.result_queue) == 0
        make_leaderless(node, queues.task_queue)
        with pytest.raises(BrokerError):
            link.probe_endpoint_queues(queues, timeout_s=2)
        link.delete_endpoint_queues(queues)
    finally:
        link.close()
