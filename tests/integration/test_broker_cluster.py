"""A private 3-node RabbitMQ cluster (one for the module): it forms; `broker status` shows its
members and each quorum queue's leader; a forwarder given every member's URL hands all of them to
a real endpoint agent and declares 3-replica queues; and confirmed messages survive a `kill -9` of
the node leading the task queue, and its restart, while a publisher and a consumer keep going on
the other members, and the forwarder and the agent (both first connected to that node) keep
running tasks."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskfabric.broker_config import ManagementClient, RabbitCluster, Topology, new_queue_secret
from taskfabric.broker_config.cli import broker
from taskfabric.broker_config.topology import EndpointQueues
from taskfabric.client import Client, Executor
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.errors import BrokerError
from taskfabric.forwarder import create_token, create_user
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.testing import ForwarderProcess, postgres_for_tests
from taskfabric.testing import unique_name, wait_until
from taskfabric.testing.campaign import DRAIN_BOUND_S
from taskfabric.testing.history import History
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

pytestmark = pytest.mark.slow

#: messages confirmed in each phase of the fault test (before the kill, while a member is down,
#: after its restart): enough to cross every phase, few enough to keep the module short
_PER_PHASE = 150


@pytest.fixture(scope="module")
def queues(broker_cluster: RabbitCluster) -> Iterator[tuple[Topology, EndpointQueues]]:
    """One endpoint's queues on the cluster, declared with 3 replicas, well before any fault (a
    quorum queue crashed within about a second of its declaration may come back leaderless)."""
    info = broker_cluster.info()
    assert info is not None
    admin = RabbitTransport(info.amqp_urls, connection_name="cluster-admin")
    admin.start(wait_s=30)
    topology = Topology(prefix=unique_name("cl"), quorum_initial_group_size=3)
    topology.declare_shared(admin)
    endpoint_queues = topology.endpoint_queues(uuid.uuid4(), new_queue_secret())
    topology.declare_endpoint(admin, endpoint_queues)
    yield topology, endpoint_queues
    admin.close()


def _status(cluster: RabbitCluster) -> dict[str, object]:
    result = CliRunner().invoke(broker, ["status", "--dir", str(cluster.directory), "--json"])
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.output)
    return document


def test_cluster_forms_and_status_shows_members_and_queue_leaders(
    broker_cluster: RabbitCluster, queues: tuple[Topology, EndpointQueues]
) -> None:
    topology, endpoint_queues = queues
    up = CliRunner().invoke(broker, ["up", "--dir", str(broker_cluster.directory), "--json"])  # finds it running
    assert up.exit_code == 0, up.output
    urls = json.loads(up.output)["amqp_urls"]
    assert len(set(urls)) == 3 and all(url.startswith("amqp://") and "127.0.0.1" in url for url in urls)

    status = _status(broker_cluster)
    members = status["members"]
    assert isinstance(members, list)
    names = [member["node"] for member in members]
    assert len(set(names)) == 3 and all(member["running"] for member in members)
    with ManagementClient(broker_cluster.info().management_urls[1]) as management:  # type: ignore[union-attr]
        assert sorted(node["name"] for node in management.nodes() if node["running"]) == sorted(names)
    rows = {row["queue"]: row for row in status["queues"]}  # type: ignore[union-attr]
    for queue in (endpoint_queues.task_queue, endpoint_queues.result_queue, topology.dead_letter_queue):
        assert rows[queue]["leader"] in names
        assert sorted(rows[queue]["members"]) == sorted(names)


def square(x: int) -> int:
    return x * x


@dataclasses.dataclass
class _Fabric:
    client: Client
    endpoint_id: str
    connection: EndpointConnection

    def run(self, numbers: range) -> list[int]:
        with Executor(self.endpoint_id, client=self.client) as executor:
            return [future.result(timeout=120) for future in [executor.submit(square, n) for n in numbers]]


@pytest.fixture(scope="module")
def fabric(broker_cluster: RabbitCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Fabric]:
    """A forwarder told every member (amqp_urls, management_urls) and a real endpoint agent
    registered through it; both first connect to member 0."""
    info = broker_cluster.info()
    assert info is not None
    folder = tmp_path_factory.mktemp("cluster-fabric")
    values = {
        "database_url": f"sqlite:///{folder / 'forwarder.db'}",
        "amqp_urls": info.amqp_urls,
        "management_urls": info.management_urls,
        "topology_prefix": unique_name("clf"),
        "confirm_timeout_s": 5.0,
        "status_period_s": 0.5,
        "endpoint_offline_after_s": 3.0,
    }
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))  # the endpoint's folder, private to the module
    settings = ForwarderSettings.from_mapping(values)
    name = unique_name("cluster-ep")
    try:
        with ForwarderProcess(folder / "forwarder", values) as forwarder:
            create_user(settings, "ada")
            client = Client(url=forwarder.url, token=create_token(settings, "ada"))
            configure_endpoint(name, settings=_ENDPOINT_SETTINGS)
            connection = register_endpoint(name, client)
            start_endpoint(name, detach=True)
            try:
                endpoint_id = str(connection.endpoint_id)
                wait_until(
                    lambda: (s := client.get_endpoint_status(endpoint_id))["status"] == "online" and s.get("workers"),
                    timeout_s=60,
                    interval_s=0.1,
                    what="the endpoint online with workers",
                )
                yield _Fabric(client, endpoint_id, connection)
            finally:
                if LocalEndpoint(name).pid() is not None:
                    stop_endpoint(name, timeout_s=30)
                client.close()
    finally:
        patch.undo()


_ENDPOINT_SETTINGS = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "scaling": {"workers_per_node": 2, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


def test_cluster_urls_reach_the_endpoint_agent_through_the_forwarder(
    broker_cluster: RabbitCluster, fabric: _Fabric
) -> None:
    """The registration answer lists every member (with the endpoint's own credentials, in the
    agent's connection file), and on a 3-node cluster the queues get 3 replicas by default."""
    info = broker_cluster.info()
    assert info is not None
    urls = fabric.connection.broker_urls
    assert len(urls) == 3 and fabric.connection.amqp_url == urls[0]
    assert all(f":{node.amqp_port}/" in url for node, url in zip(info.nodes, urls, strict=True))
    assert all(url.startswith(f"amqp://{fabric.connection.username}:") for url in urls)
    with ManagementClient(info.management_urls, vhost=info.vhost) as management:
        assert management.queue(fabric.connection.task_queue)["arguments"]["x-quorum-initial-group-size"] == 3
    assert fabric.run(range(50)) == [n * n for n in range(50)]


class _Publisher:
    """Publishes numbered messages with confirms until stopped; a publish whose outcome is unknown
    (connection lost, confirm timed out) is sent again: at least once, as the fabric does."""

    def __init__(self, transport: RabbitTransport, topology: Topology, queue: str) -> None:
        self._transport = transport
        self._exchange = topology.tasks_exchange
        self._queue = queue
        self.confirmed: list[bytes] = []
        self.retries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            bodies = [b"m-%06d" % (number + i) for i in range(10)]
            number += len(bodies)
            while bodies and not self._stop.is_set():
                bodies = self._publish(bodies)

    def _publish(self, bodies: list[bytes]) -> list[bytes]:
        """Publish `bodies`; the ones left unconfirmed."""
        messages = [OutgoingMessage(exchange=self._exchange, routing_key=self._queue, body=body) for body in bodies]
        futures = self._transport.publish_many(messages)
        unconfirmed = []
        for body, future in zip(bodies, futures, strict=True):
            try:
                future.result(timeout=30)
            except BrokerError:
                unconfirmed.append(body)
            else:
                self.confirmed.append(body)
        if unconfirmed:
            self.retries += 1
            self._stop.wait(0.2)  # the transport is reconnecting meanwhile
        return unconfirmed


def test_cluster_keeps_confirmed_messages_when_the_task_queue_leader_is_killed(
    broker_cluster: RabbitCluster, queues: tuple[Topology, EndpointQueues], fabric: _Fabric
) -> None:
    topology, endpoint_queues = queues
    info = broker_cluster.info()
    assert info is not None
    leader = broker_cluster.leader_of(endpoint_queues.task_queue)
    # a quorum queue's first leader is the declaring connection's node (3.10's `client-local`):
    # member 0, where the forwarder and the agent are connected too
    assert leader == 0
    # both clients first connect to the leader's node, so its death forces each to fail over
    order = [leader, *(i for i in range(3) if i != leader)]
    urls = [info.amqp_urls[i] for i in order]
    publisher_link = RabbitTransport(urls, confirm_timeout_s=5.0, backoff_max_s=1.0, connection_name="cl-publisher")
    consumer_link = RabbitTransport(urls, backoff_max_s=1.0, connection_name="cl-consumer")
    publisher_link.start(wait_s=30)
    consumer_link.start(wait_s=30)
    received: list[bytes] = []
    lock = threading.Lock()

    def on_delivery(delivery: Delivery) -> None:
        with lock:
            received.append(delivery.body)
        consumer_link.ack(delivery)

    publisher = _Publisher(publisher_link, topology, endpoint_queues.task_queue)
    try:
        consumer_link.consume(endpoint_queues.task_queue, on_delivery, prefetch=50)
        publisher.start()
        wait_until(lambda: len(publisher.confirmed) >= _PER_PHASE, timeout_s=30, what="traffic before the fault")

        broker_cluster.kill(leader)
        at_kill = len(publisher.confirmed)
        wait_until(
            lambda: len(publisher.confirmed) >= at_kill + _PER_PHASE,
            timeout_s=60,
            what="confirmed publishes while the leader's node is down",
        )
        assert not broker_cluster.members[leader].is_running()
        # the management client, asking the dead node first, moves on to a live one
        with ManagementClient([info.management_urls[i] for i in order], vhost=info.vhost) as management:
            new_leader = management.queue_states()[endpoint_queues.task_queue]["leader"]
        assert new_leader in broker_cluster.member_names and new_leader != broker_cluster.member_names[leader]
        with lock:
            assert len(received) > at_kill  # consumed from the surviving members
        assert fabric.run(range(100, 200)) == [n * n for n in range(100, 200)]  # forwarder and agent moved on

        broker_cluster.start_member(leader)
        wait_until(
            lambda: _online_replicas(broker_cluster, endpoint_queues.task_queue) == 3,
            timeout_s=60,
            what="the restarted member back among the queue's online replicas",
        )
        at_restart = len(publisher.confirmed)
        wait_until(
            lambda: len(publisher.confirmed) >= at_restart + _PER_PHASE,
            timeout_s=60,
            what="confirmed publishes after the restart",
        )
    finally:
        publisher.stop()
    confirmed = set(publisher.confirmed)
    try:
        wait_until(lambda: confirmed <= set(received), timeout_s=60, what="every confirmed message consumed")
    finally:
        lost = confirmed - set(received)
        publisher_link.close()
        consumer_link.close()
    assert not lost, f"{len(lost)} confirmed messages lost, e.g. {sorted(lost)[:5]}"
    assert len(confirmed) >= 3 * _PER_PHASE
    assert _status(broker_cluster)["running"] is True
    assert fabric.run(range(200, 250)) == [n * n for n in range(200, 250)]


def _online_replicas(cluster: RabbitCluster, queue: str) -> int:
    rows = _status(cluster)["queues"]
    assert isinstance(rows, list)
    return next((len(row["online"]) for row in rows if row["queue"] == queue), 0)


def test_cluster_directory_refuses_another_size(broker_cluster: RabbitCluster) -> None:
    result = CliRunner().invoke(broker, ["up", "--dir", str(broker_cluster.directory), "--nodes", "2"])
    assert result.exit_code != 0 and "has 3 nodes, not 2" in result.output


# --- issue 18's fault test: the whole fabric on the cluster under load ----------------------------

#: tasks in flight when the broker node is killed (all accepted, none run: a closed gate holds them)
_IN_FLIGHT = 20_000
_REPLICA_SETTINGS = {
    "status_period_s": 0.5,
    "endpoint_offline_after_s": 3.0,
    "status_flush_s": 0.2,
    "confirm_timeout_s": 10.0,
    "stream_poll_s": 5.0,
    "lease_ttl_s": 6.0,
    "endpoint_sync_period_s": 0.5,
    "max_batch_tasks": 5000,
}


@dataclasses.dataclass
class _Replicated:
    first: ForwarderProcess
    second: ForwarderProcess
    token: str
    endpoints: dict[str, str]  # id -> name


@pytest.fixture(scope="module")
def replicated(broker_cluster: RabbitCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Replicated]:
    """Two forwarder replicas on one PostgreSQL, both given every member, and two endpoint agents
    registered through the first (each agent first connects to member 0)."""
    info = broker_cluster.info()
    assert info is not None
    folder = tmp_path_factory.mktemp("cluster-replicas")
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    names: list[str] = []
    try:
        with postgres_for_tests(folder / "postgres") as database_url:
            values = {
                **_REPLICA_SETTINGS,
                "database_url": database_url,
                "amqp_urls": info.amqp_urls,
                "management_urls": info.management_urls,
                "topology_prefix": unique_name("clr"),
            }
            settings = ForwarderSettings.from_mapping(values)
            with (
                ForwarderProcess(folder / "first", values) as first,
                ForwarderProcess(folder / "second", values) as second,
            ):
                create_user(settings, "grace")
                token = create_token(settings, "grace")
                endpoints: dict[str, str] = {}
                with Client(url=first.url, token=token) as client:
                    for _ in range(2):
                        name = unique_name("cluster-load")
                        configure_endpoint(name, settings=_ENDPOINT_SETTINGS)
                        endpoint_id = str(register_endpoint(name, client).endpoint_id)
                        names.append(name)
                        start_endpoint(name, detach=True)
                        endpoints[endpoint_id] = name
                    for endpoint_id in endpoints:
                        wait_until(
                            lambda endpoint_id=endpoint_id: (
                                (s := client.get_endpoint_status(endpoint_id))["status"] == "online"
                                and s.get("workers")
                            ),
                            timeout_s=60,
                            interval_s=0.1,
                            what=f"endpoint {endpoint_id} online with workers",
                        )
                yield _Replicated(first, second, token, endpoints)
                for name in names:
                    if LocalEndpoint(name).pid() is not None:
                        stop_endpoint(name, timeout_s=30)
    finally:
        patch.undo()


def test_cluster_under_load_loses_no_task_when_a_node_and_a_replica_are_killed(
    broker_cluster: RabbitCluster, replicated: _Replicated, tmp_path: Path
) -> None:
    """20,000 tasks in flight across 2 endpoints and 2 forwarder replicas on the 3-node cluster:
    kill -9 the node leading the endpoints' task queues (restarted later), kill -9 the replica the
    client is on; every accepted task ends with exactly one reported result, the client carries on."""
    gate = tmp_path / "gate"
    histories = {
        endpoint_id: History(f"cluster-{i}", tmp_path / "histories")
        for i, endpoint_id in enumerate(replicated.endpoints)
    }
    client = Client(url=[replicated.first.url, replicated.second.url], token=replicated.token)
    executors = {endpoint_id: Executor(endpoint_id, client=client) for endpoint_id in replicated.endpoints}
    try:
        for endpoint_id, history in histories.items():
            history.submit(executors[endpoint_id], _IN_FLIGHT // len(histories), gate=gate)
        submitted = [item for history in histories.values() for item in history.submitted]
        wait_until(
            lambda: all(getattr(item.future, "task_id", None) for item in submitted),
            timeout_s=180,
            interval_s=0.2,
            what=f"all {_IN_FLIGHT} tasks accepted",
        )
        assert not any(item.future.done() for item in submitted)  # all in flight: the gate is closed

        task_queues = [
            EndpointConnection.load(LocalEndpoint(name).paths.connection).task_queue
            for name in replicated.endpoints.values()
        ]
        leaders = {broker_cluster.leader_of(queue) for queue in task_queues}
        victim = next(index for index in leaders if index is not None)
        broker_cluster.kill(victim)
        gate.touch()  # the workload runs while the node is down ...
        wait_until(
            lambda: sum(item.future.done() for item in submitted) >= 2_000,
            timeout_s=120,
            interval_s=0.2,
            what="results flowing with a broker node down",
        )
        replicated.first.kill()  # ... and the replica the client first talks to dies
        done_at_kill = sum(item.future.done() for item in submitted)
        wait_until(
            lambda: sum(item.future.done() for item in submitted) >= done_at_kill + 2_000,
            timeout_s=120,
            interval_s=0.2,
            what="results flowing through the surviving replica",
        )
        broker_cluster.start_member(victim)

        counts = [history.check(client, bound_s=DRAIN_BOUND_S) for history in histories.values()]
    finally:
        for executor in executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        client.close()
    for case in counts:
        print(case.line(), f"killed_node={victim} task_queue_leaders={sorted(leaders, key=str)}")
    assert sum(case.accepted for case in counts) == _IN_FLIGHT
    assert [case.violations for case in counts] == [0, 0], [case.line() for case in counts]
    assert sum(case.errors for case in counts) == 0
