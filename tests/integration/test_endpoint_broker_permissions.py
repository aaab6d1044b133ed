"""What an endpoint's own broker user may do, tried with a real pika connection on the session
broker (on whatever vhost TASKFABRIC_TEST_AMQP_URL names): its own task and control queues and
its result route work; the dead-letter queue, another endpoint's queues, the shared exchanges and
every other fixed name are refused with 403 ACCESS_REFUSED."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.testing import EndpointHarness

ACCESS_REFUSED = 403


@pytest.fixture
def two_endpoints(endpoints: EndpointHarness) -> tuple[EndpointConnection, EndpointConnection]:
    return endpoints.provision()[1], endpoints.provision()[1]


@pytest.fixture
def as_endpoint(
    two_endpoints: tuple[EndpointConnection, EndpointConnection],
) -> Iterator[pika.BlockingConnection]:
    """A pika connection with the first endpoint's own credentials."""
    connection = pika.BlockingConnection(pika.URLParameters(two_endpoints[0].amqp_url))
    yield connection
    if connection.is_open:
        connection.close()


def _refused(connection: pika.BlockingConnection, attempt: Callable[[BlockingChannel], object]) -> int:
    """The reply code of the channel error `attempt` ends in (0: it was allowed)."""
    channel = connection.channel()
    try:
        attempt(channel)
        channel.basic_qos(prefetch_count=1)  # a round trip: a refused publish closes the channel by now
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    channel.close()
    return 0


def test_an_endpoint_user_reaches_only_its_own_queues(
    endpoints: EndpointHarness,
    two_endpoints: tuple[EndpointConnection, EndpointConnection],
    as_endpoint: pika.BlockingConnection,
) -> None:
    me, other = two_endpoints
    topology = endpoints.topology
    dead_letters = topology.dead_letter_queue
    exchanges = (topology.tasks_exchange, topology.results_exchange, topology.dead_letter_exchange)
    attempts: dict[str, Callable[[BlockingChannel], object]] = {
        # the dead-letter queue: every poison task of every endpoint
        "declare the dead-letter queue": lambda ch: ch.queue_declare(dead_letters, durable=True),
        "consume the dead-letter queue": lambda ch: ch.basic_consume(dead_letters, lambda *a: None),
        "get from the dead-letter queue": lambda ch: ch.basic_get(dead_letters),
        "purge the dead-letter queue": lambda ch: ch.queue_purge(dead_letters),
        "delete the dead-letter queue": lambda ch: ch.queue_delete(dead_letters),
        "bind the dead-letter queue": lambda ch: ch.queue_bind(dead_letters, topology.results_exchange, "x"),
        "publish to the dead-letter queue": lambda ch: ch.basic_publish("", dead_letters, b"forged"),
        # another endpoint's queues
        "consume another's tasks": lambda ch: ch.basic_consume(other.task_queue, lambda *a: None),
        "get another's control message": lambda ch: ch.basic_get(other.control_queue),
        "consume another's results": lambda ch: ch.basic_consume(other.result_queue, lambda *a: None),
        "purge another's tasks": lambda ch: ch.queue_purge(other.task_queue),
        "delete another's queue": lambda ch: ch.queue_delete(other.task_queue),
        "publish to another's queue directly": lambda ch: ch.basic_publish("", other.task_queue, b"forged"),
        # its own queues, beyond reading its tasks
        "steal tasks by binding its own queue": lambda ch: ch.queue_bind(
            me.task_queue, topology.tasks_exchange, other.task_queue
        ),
        "delete its own queue": lambda ch: ch.queue_delete(me.task_queue),
        "declare a queue of its own": lambda ch: ch.queue_declare(f"{topology.prefix}.mine", durable=True),
        "declare a server-named queue": lambda ch: ch.queue_declare("", exclusive=True),
        # the shared exchanges and the broker's own
        **{f"redeclare {name}": (lambda ch, n=name: ch.exchange_declare(n, "fanout")) for name in exchanges},
        **{f"delete {name}": (lambda ch, n=name: ch.exchange_delete(n)) for name in exchanges},
        "bind the tasks exchange into the results exchange": lambda ch: ch.exchange_bind(
            topology.results_exchange, topology.tasks_exchange, "#"
        ),
        "publish to amq.direct": lambda ch: ch.basic_publish("amq.direct", me.result_queue, b"x"),
        "publish to amq.topic": lambda ch: ch.basic_publish("amq.topic", "x", b"x"),
        "declare an exchange": lambda ch: ch.exchange_declare(f"{topology.prefix}.evil", "fanout"),
    }
    codes = {what: _refused(as_endpoint, attempt) for what, attempt in attempts.items()}
    assert {what: code for what, code in codes.items() if code != ACCESS_REFUSED} == {}

    # its own route works: read its task and control queues, publish to its result queue
    channel = as_endpoint.channel()
    channel.confirm_delivery()
    assert channel.basic_get(me.task_queue) == (None, None, None)
    assert channel.basic_get(me.control_queue) == (None, None, None)
    channel.basic_publish(
        topology.results_exchange, me.result_queue, b"ok", pika.BasicProperties(user_id=me.username), mandatory=True
    )
    channel.close()
