"""The forwarder's administrator link without a broker: `AdminBrokerLink` on a `MemoryTransport`
with a stand-in for the management API. Endpoint queues, narrow credentials named by the
topology's rule, and task messages on the endpoint's own queue, signed with the forwarder's user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from taskfabric.broker_config import broker_username, endpoint_id_of_username, new_queue_secret
from taskfabric.errors import BrokerUnavailable, ConfigError
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.testing import MemoryEndpointUsers
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, MemoryBroker, MemoryTransport


@pytest.fixture
def link() -> Iterator[AdminBrokerLink]:
    settings = ForwarderSettings(topology_prefix="unit")
    link = AdminBrokerLink(
        settings, transport=MemoryTransport(MemoryBroker(), username="forwarder"), management=MemoryEndpointUsers()
    )
    link.start()
    yield link
    link.close()


def _users(link: AdminBrokerLink) -> MemoryEndpointUsers:
    assert isinstance(link.management, MemoryEndpointUsers)
    return link.management


def test_endpoint_users_follow_the_topologys_naming_rule() -> None:
    endpoint_id = uuid.uuid4()
    assert endpoint_id_of_username(broker_username(endpoint_id)) == endpoint_id
    assert endpoint_id_of_username("forwarder") is None
    assert endpoint_id_of_username("ep-not-a-uuid") is None
    assert endpoint_id_of_username(None) is None


def test_credentials_are_narrow_and_rekeying_closes_old_connections(link: AdminBrokerLink) -> None:
    endpoint_id = uuid.uuid4()
    queues = link.queues_of(endpoint_id, new_queue_secret())
    link.declare_endpoint_queues(queues)
    first = link.issue_credentials(endpoint_id, queues, revoke_old=False)
    users = _users(link)
    username = broker_username(endpoint_id)
    assert users.users == {username: first}
    assert users.permissions[username] == link.topology.endpoint_permissions(queues)
    assert users.closed_for == []

    second = link.issue_credentials(endpoint_id, queues, revoke_old=True)
    assert second != first and users.users[username] == second
    assert [user for user, _reason in users.closed_for] == [username]

    link.revoke_credentials(endpoint_id)
    assert username not in users.users


def test_task_messages_reach_the_endpoints_queue_signed_by_the_forwarder(link: AdminBrokerLink) -> None:
    queues = link.queues_of(uuid.uuid4(), new_queue_secret())
    link.declare_endpoint_queues(queues)
    for future in link.publish_task_messages(queues, [b"first", b"second"]):
        future.result(timeout=5)
    received: list[Delivery] = []
    link.transport.consume(queues.task_queue, received.append, prefetch=10)
    wait_until(lambda: len(received) == 2, what="both task messages")
    assert [delivery.body for delivery in received] == [b"first", b"second"]
    assert {delivery.user_id for delivery in received} == {"forwarder"}


class _Cluster(MemoryEndpointUsers):
    def __init__(self, nodes: list[str] | None) -> None:
        super().__init__()
        self.nodes = nodes

    def cluster_nodes(self) -> list[str]:
        if self.nodes is None:
            raise BrokerUnavailable("management API unreachable")
        return self.nodes


_THREE = ["rabbit@a", "rabbit@b", "rabbit@c"]


@pytest.mark.parametrize(
    ("wanted", "nodes", "chosen"),
    [
        ("auto", ["rabbit@a"], "classic"),  # the single-node default
        ("auto", _THREE, "quorum"),
        ("auto", None, "quorum"),  # cannot tell: the type that is safe everywhere
        ("classic", ["rabbit@a"], "classic"),
        ("classic", None, "classic"),
        ("classic", _THREE, None),  # refused
        ("quorum", ["rabbit@a"], "quorum"),
        ("quorum", _THREE, "quorum"),
    ],
)
def test_the_queue_type_is_chosen_at_start_and_classic_is_refused_on_a_cluster(
    wanted: str, nodes: list[str] | None, chosen: str | None
) -> None:
    settings = ForwarderSettings.from_mapping({"topology_prefix": "unit", "queue_type": wanted})
    link = AdminBrokerLink(settings, transport=MemoryTransport(MemoryBroker()), management=_Cluster(nodes))
    try:
        if chosen is None:
            with pytest.raises(ConfigError, match=r"cluster of 3 nodes.*queue_type quorum"):
                link.start()
        else:
            link.start()
            assert link.topology.queue_type == chosen
            queues = link.queues_of(uuid.uuid4(), new_queue_secret())
            access = link.topology.broker_access(queues, amqp_url="amqp://x/", username="ep")
            assert access.queue_type == chosen  # what registrations tell the agents
    finally:
        link.close()


def test_auto_keeps_quorum_queues_with_a_management_stand_in_that_cannot_tell(link: AdminBrokerLink) -> None:
    assert link.topology.queue_type == "quorum"
