"""The Globus Compute result reader on the real broker: the credentials
`GET /v2/get_amqp_result_connection_url` hands out read the user's own result queues and nothing
else: not another user's queue, no new queue, no publish (the default exchange included, which
reaches every queue by name, an endpoint's control queue among them)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import cast

import pika
import pika.adapters.blocking_connection
import pika.exceptions
import pytest

from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.globus_compute.results import ComputeResultRelay, result_broker_username
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store
from taskfabric.testing import BrokerUnderTest, unique_name

Channel = pika.adapters.blocking_connection.BlockingChannel


def test_result_readers_read_only_their_own_queues_and_publish_nothing(broker: BrokerUnderTest) -> None:
    settings = ForwarderSettings(
        amqp_url=broker.amqp_url, management_url=broker.management_url, topology_prefix=unique_name("gc")
    )
    link = AdminBrokerLink(settings)
    link.start()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    try:
        relay = ComputeResultRelay(settings, store=cast(Store, None), broker=link)  # the reader needs no store
        url, prefix = relay.issue_reader(alice)
        _, bob_prefix = relay.issue_reader(bob)
        mine, his = prefix + str(uuid.uuid4()), bob_prefix + str(uuid.uuid4())
        for queue in (mine, his):
            link.transport.declare_queue(queue, arguments={"x-expires": 60_000})
        refusals: list[Callable[[Channel], object]] = [
            lambda channel: channel.basic_get(his),
            lambda channel: channel.queue_declare(prefix + "made-by-the-reader"),
            lambda channel: channel.basic_publish("", mine, b"forged"),
            lambda channel: channel.basic_publish("", his, b"forged"),
            lambda channel: channel.basic_publish(f"{settings.topology_prefix}.tasks", "x", b"forged"),
        ]
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            assert connection.channel().basic_get(mine) == (None, None, None)  # its own: empty, readable
            for refused in refusals:
                channel = connection.channel()
                channel.confirm_delivery()
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
                    refused(channel)
                assert closed.value.reply_code == 403, closed.value
        finally:
            connection.close()
        for queue in (mine, his):
            link.transport.delete_queue(queue)
    finally:
        for user in (alice, bob):
            link.management.delete_user(result_broker_username(user))
        link.close()
