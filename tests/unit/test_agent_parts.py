"""The agent's named parts on their own: the result outbox and the ack tracker."""

from __future__ import annotations

import uuid

from taskfabric.endpoint_agent.ack_tracker import AckTracker
from taskfabric.endpoint_agent.outbox import ResultOutbox
from taskfabric.protocol import Result
from taskfabric.transport import Delivery


def _result() -> Result:
    return Result(task_id=uuid.uuid4(), ok=True, value=b"v")


def _delivery(tag: int) -> Delivery:
    return Delivery(
        body=b"",
        exchange="x",
        routing_key=f"q{tag}",
        headers={},
        message_id=None,
        user_id=None,
        redelivered=False,
        delivery_count=0,
        queue="q",
        token=tag,
    )


def test_results_gather_while_the_in_flight_publishes_await_confirms() -> None:
    outbox = ResultOutbox(max_in_flight=1)
    first, second = _result(), _result()
    outbox.append(first)
    assert outbox.take() == [first]
    outbox.sent(1, [first])
    outbox.append(second)
    assert outbox.take() == [] and outbox.is_in_flight(first.task_id) and not outbox.empty
    assert outbox.settled(1, []) == [first] and not outbox.is_in_flight(first.task_id)
    assert outbox.take() == [second]


def test_at_exit_every_unconfirmed_result_is_taken() -> None:
    outbox = ResultOutbox(max_in_flight=2)
    sent, pending = _result(), _result()
    outbox.sent(7, [sent])
    outbox.append(pending)
    assert outbox.take_unconfirmed() == [sent, pending]
    assert outbox.tasks_in_flight == 1 and outbox.pending == []


def test_a_message_is_acked_once_all_its_tasks_are_safe() -> None:
    acks = AckTracker()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    one, two = _delivery(1), _delivery(2)
    acks.track(one, {a, b})
    acks.track(two, {c})
    assert acks.now_safe([a]) == []
    assert acks.now_safe([b, c, uuid.uuid4()]) == [one, two]
    assert acks.now_safe([a, b, c]) == []  # each message once
