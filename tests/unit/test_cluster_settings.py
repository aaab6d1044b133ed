"""Several broker URLs, without a broker: forwarder settings, the registration answer, quorum
queue arguments, the transport's URL list and the `broker up --nodes` guards."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskfabric.broker_config import RabbitCluster, Topology, new_queue_secret
from taskfabric.broker_config.cli import broker
from taskfabric.broker_config.topology import default_quorum_group_size
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.errors import BrokerError, ConfigError
from taskfabric.forwarder.deployment import load_serve_settings
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.protocol.api import BrokerAccess, parse, render
from taskfabric.transport import RabbitTransport

_URLS = ["amqp://admin:pw@10.0.0.1:5672/tf", "amqp://admin:pw@10.0.0.2:5673/tf", "amqp://admin:pw@10.0.0.3:5674/tf"]


def test_cluster_amqp_urls_stand_for_amqp_url_and_reach_endpoints_with_their_credentials() -> None:
    settings = ForwarderSettings.from_mapping({"amqp_urls": _URLS, "management_urls": ["http://a:b@10.0.0.1:15672"]})
    assert settings.amqp_url == _URLS[0] and settings.broker_urls == _URLS
    assert settings.management_url == "http://a:b@10.0.0.1:15672"
    assert settings.endpoint_broker_urls("ep-1", "s/cret") == [
        "amqp://ep-1:s%2Fcret@10.0.0.1:5672/tf",
        "amqp://ep-1:s%2Fcret@10.0.0.2:5673/tf",
        "amqp://ep-1:s%2Fcret@10.0.0.3:5674/tf",
    ]
    assert settings.endpoint_broker_url("ep-1", "x") == "amqp://ep-1:x@10.0.0.1:5672/tf"
    public = ForwarderSettings.from_mapping(
        {"amqp_urls": _URLS, "endpoint_amqp_urls": ["amqps://b1.example.org:5671/tf", "amqps://b2.example.org:5671/tf"]}
    )
    assert public.endpoint_broker_urls("ep", "x") == [
        "amqps://ep:x@b1.example.org:5671/tf",
        "amqps://ep:x@b2.example.org:5671/tf",
    ]
    single = ForwarderSettings.from_mapping({"amqp_url": _URLS[1]})
    assert single.broker_urls == [_URLS[1]] and single.endpoint_broker_urls("ep", "x") == [
        "amqp://ep:x@10.0.0.2:5673/tf"
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"amqp_urls": ["http://h/tf"]}, r"amqp_urls\[0\]: expected a amqp/amqps URL"),
        (
            {"amqp_urls": [_URLS[0], "amqp://a:b@h:1/other"]},
            "amqp_urls: every URL must have the same scheme and virtual host",
        ),
        ({"amqp_url": "amqp://a:b@elsewhere:1/tf", "amqp_urls": _URLS}, "amqp_url: amqp_url is not one of amqp_urls"),
        ({"management_urls": ["amqp://h:1"]}, r"management_urls\[0\]: expected a http/https URL"),
        ({"endpoint_amqp_urls": ["amqp:///tf"]}, r"endpoint_amqp_urls\[0\]"),
        ({"quorum_initial_group_size": 0}, "quorum_initial_group_size: must be at least 1"),
        ({"amqp_urls": "amqp://h/tf"}, "amqp_urls"),
    ],
)
def test_cluster_settings_name_the_bad_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ForwarderSettings.from_mapping(values)


def test_cluster_urls_name_the_broker_for_serve(tmp_path: Path) -> None:
    config = tmp_path / "forwarder.yaml"
    config.write_text(
        f"amqp_urls: [{_URLS[0]}, {_URLS[1]}]\nmanagement_urls: [http://a:b@h:1]\ndatabase_url: sqlite:///x.db\n"
    )
    assert load_serve_settings(config, environ={}).broker_urls == _URLS[:2]


def test_cluster_group_size_goes_into_quorum_queue_arguments() -> None:
    assert "x-quorum-initial-group-size" not in Topology(prefix="t").queue_arguments()
    arguments = Topology(prefix="t", quorum_initial_group_size=3).queue_arguments()
    assert arguments["x-quorum-initial-group-size"] == 3 and arguments["x-queue-type"] == "quorum"
    assert [default_quorum_group_size(n) for n in (1, 2, 3, 5)] == [None, None, 3, 3]
    with pytest.raises(ValueError, match="quorum_initial_group_size"):
        Topology(prefix="t", quorum_initial_group_size=0)


def test_cluster_registration_answer_carries_every_url_and_old_answers_still_parse() -> None:
    topology = Topology(prefix="t")
    queues = topology.endpoint_queues(uuid.uuid4(), new_queue_secret())
    access = topology.broker_access(queues, amqp_url=_URLS[0], amqp_urls=_URLS, username="ep-1")
    parsed = parse(BrokerAccess, render(access))
    assert parsed.amqp_urls == _URLS and parsed.broker_urls == tuple(_URLS)
    one = topology.broker_access(queues, amqp_url=_URLS[0], amqp_urls=_URLS[:1], username="ep-1")
    assert one.amqp_urls is None and one.broker_urls == (_URLS[0],)
    old = render(access)
    del old["amqp_urls"]  # an older forwarder's answer
    assert parse(BrokerAccess, old).broker_urls == (_URLS[0],)
    bad = {**render(access), "amqp_urls": [1, 2]}
    with pytest.raises(Exception, match="amqp_urls"):
        parse(BrokerAccess, bad)


def test_cluster_urls_survive_the_agents_connection_file(tmp_path: Path) -> None:
    topology = Topology(prefix="t")
    queues = topology.endpoint_queues(uuid.uuid4(), new_queue_secret())
    access = topology.broker_access(queues, amqp_url=_URLS[0], amqp_urls=_URLS, username="ep-1")
    connection = EndpointConnection.of(uuid.uuid4(), access)
    connection.save(tmp_path / "connection.json")
    assert EndpointConnection.load(tmp_path / "connection.json").broker_urls == tuple(_URLS)


def test_cluster_transport_takes_a_list_of_urls() -> None:
    transport = RabbitTransport(_URLS)
    try:
        assert transport.urls == _URLS and transport.username == "admin"
        assert "pw" not in repr(transport) and "10.0.0.3" in repr(transport)
    finally:
        transport.close()
    with pytest.raises(ValueError, match="no broker URL"):
        RabbitTransport([])


def test_cluster_broker_up_refuses_tls_a_bad_size_and_a_single_nodes_folder(tmp_path: Path) -> None:
    runner = CliRunner()
    tls = runner.invoke(broker, ["up", "--dir", str(tmp_path / "c"), "--nodes", "3", "--tls"])
    assert tls.exit_code == 2 and "--tls is for a single node" in tls.output
    zero = runner.invoke(broker, ["up", "--dir", str(tmp_path / "c"), "--nodes", "0"])
    assert zero.exit_code == 2 and "--nodes" in zero.output
    single = tmp_path / "single"
    single.mkdir()
    (single / "node.json").write_text("{}")
    mixed = runner.invoke(broker, ["up", "--dir", str(single), "--nodes", "3"])
    assert mixed.exit_code == 2 and "holds a single node" in mixed.output
    with pytest.raises(BrokerError, match="no RabbitMQ cluster is configured"):
        RabbitCluster(tmp_path / "nothing")
