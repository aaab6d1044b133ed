"""`taskfabric bench --scenarios endpoints` at N=50, end to end: a real forwarder on the session's
broker, endpoints registered through the API and in bulk, simulated agents heartbeating through
the broker, tasks submitted to some and answered (taskfabric/tools/bench_endpoints.py). And the
forwarder's start with many endpoints: only those missing a queue are declared again."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfabric.broker_config import Topology
from taskfabric.client import Client
from taskfabric.errors import NotFound
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name
from taskfabric.tools.bench_endpoints import EndpointsConfig, EndpointsTarget, endpoints_scenario
from taskfabric.transport import RabbitTransport

pytestmark = pytest.mark.timeout(120)


def test_the_endpoints_scenario_then_a_restart_declares_only_missing_queues(
    broker: BrokerUnderTest, tmp_path: Path
) -> None:
    assert broker.management_url, "the scenario needs the broker's management API"
    prefix = unique_name("bench-endpoints")
    values = {
        "database_url": f"sqlite:///{tmp_path / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": prefix,
        "endpoint_sync_period_s": 0.5,  # bulk-registered endpoints are consumed at the next sync
        "status_flush_s": 0.2,
        "endpoint_offline_after_s": 30.0,
    }
    settings = ForwarderSettings.from_mapping(values)
    username = unique_name("researcher")
    create_user(settings, username)
    token = create_token(settings, username)
    with ForwarderProcess(tmp_path / "forwarder", values) as forwarder:
        assert forwarder.pid is not None
        target = EndpointsTarget(
            settings=settings, forwarder_url=forwarder.url, forwarder_pid=forwarder.pid, token=token, username=username
        )
        config = EndpointsConfig(
            endpoints=50,
            registered_by_api=10,
            heartbeat_period_s=0.5,
            window_s=2.0,
            submit_endpoints=10,
            tasks_per_endpoint=5,
            consumers_timeout_s=60.0,
        )
        figures = endpoints_scenario(target, config)

    assert figures["endpoints"] == 50
    assert figures["api_registrations_per_s"] > 0 and figures["bulk_registrations_per_s"] > 0
    # every endpoint has its three queues (other tests' queues share the node: at least)
    assert figures["broker_queues_registered"] >= 150
    assert figures["heartbeats"] >= 50  # one round at least reached the broker
    # every sampled endpoint reads `online`: its reports went broker -> forwarder -> store/view
    assert figures["online_sampled"] == figures["sampled"] == 20
    assert figures["tasks"] == 50
    assert figures["tasks_answered_by_agents"] == 50
    assert figures["tasks_lost"] == 0 and figures["tasks_failed"] == 0
    assert figures["heartbeat_ingest_cpu_ms"] is not None

    # a restart: the forwarder lists the broker's queues and declares those of stored endpoints
    # that lack one (a control queue added by an upgrade, a queue lost with a broker's data)
    with Store.open(settings.store_url) as store:
        records = store.endpoints.list()
    assert len(records) == 50
    topology = Topology(prefix=prefix)
    queues = [topology.endpoint_queues(record.endpoint_id, record.queue_secret) for record in records]
    admin = RabbitTransport(broker.amqp_url, connection_name="bench-endpoints-test")
    admin.start(wait_s=15)
    try:
        admin.delete_queue(queues[0].control_queue)
        with pytest.raises(NotFound):
            admin.queue_depth(queues[0].control_queue)
        with (
            ForwarderProcess(tmp_path / "restarted", values) as forwarder,
            Client(url=forwarder.url, token=token) as client,
        ):
            for each in queues:
                for name in (each.task_queue, each.result_queue, each.control_queue):
                    assert admin.queue_depth(name) >= 0  # exists (NotFound otherwise)
            for record in records:  # the forwarder deletes their queues and broker users
                client.delete_endpoint(record.endpoint_id)
            assert client.list_endpoints() == []
        with pytest.raises(NotFound):
            admin.queue_depth(queues[0].task_queue)
        topology.delete_shared(admin)
    finally:
        admin.close()
