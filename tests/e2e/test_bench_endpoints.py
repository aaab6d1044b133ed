"""`taskfabric bench --scenarios endpoints` at N=50, end to end: a real forwarder on the session's
broker, endpoints registered through the API and in bulk, simulated agents heartbeating through
the broker, tasks submitted to some and answered (taskfabric/tools/bench_endpoints.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfabric.client import Client
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name
from taskfabric.tools.bench_endpoints import EndpointsConfig, EndpointsTarget, endpoints_scenario

pytestmark = pytest.mark.timeout(120)


def test_the_endpoints_scenario_registers_heartbeats_and_drains(broker: BrokerUnderTest, tmp_path: Path) -> None:
    assert broker.management_url, "the scenario needs the broker's management API"
    values = {
        "database_url": f"sqlite:///{tmp_path / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("bench-endpoints"),
        "endpoint_sync_period_s": 0.5,  # bulk-registered endpoints are consumed at the next sync
        "status_flush_s": 0.2,
        "endpoint_offline_after_s": 30.0,
    }
    settings = ForwarderSettings.from_mapping(values)
    username = unique_name("researcher")
    with ForwarderProcess(tmp_path / "forwarder", values) as forwarder:
        create_user(settings, username)
        token = create_token(settings, username)
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
            cleanup=True,
            consumers_timeout_s=60.0,
        )
        figures = endpoints_scenario(target, config)
        with Client(url=forwarder.url, token=token) as client:
            left = client.list_endpoints()

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
    assert left == []  # cleanup deleted every endpoint through the API
