"""The results hub and a stream subscriber's bookkeeping: once per connection, owners, bounds."""

from __future__ import annotations

import time
import uuid

import pytest

from taskfabric.forwarder.records import TaskRecord, TaskStatus
from taskfabric.forwarder.stream import ResultHub, StreamLimits, StreamSubscriber

OWNER = uuid.uuid4()


def _finished(task_id: uuid.UUID, *, owner: uuid.UUID = OWNER, value: bytes = b"v") -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        owner_id=owner,
        endpoint_id=uuid.uuid4(),
        function_id=uuid.uuid4(),
        status=TaskStatus.SUCCESS,
        created_at=time.time(),
        completed_at=time.time(),
        result=value,
    )


def _subscribed(hub: ResultHub, ids: list[uuid.UUID], limits: StreamLimits | None = None) -> StreamSubscriber:
    subscriber = StreamSubscriber(OWNER, limits or StreamLimits())
    hub.watch(subscriber, subscriber.want(ids))
    return subscriber


def _sent_ids(subscriber: StreamSubscriber) -> list[str]:
    sent: list[str] = []
    while (frame := subscriber.next_frame()) is not None:
        sent.extend(result["task_id"] for result in frame.get("results", []))
    return sent


def test_results_reach_every_watcher_once() -> None:
    hub = ResultHub()
    a, b = uuid.uuid4(), uuid.uuid4()
    first, second = _subscribed(hub, [a, b]), _subscribed(hub, [a])
    hub.publish([_finished(a)])
    hub.publish([_finished(a, value=b"duplicate")])
    assert _sent_ids(first) == [str(a)] and _sent_ids(second) == [str(a)]
    assert set(first.pending) == {b} and set(second.pending) == set()
    assert hub.watched == 1
    # subscribing again to what was sent does not send it again
    assert first.want([a, b]) == []


def test_another_owners_result_never_reaches_a_subscriber() -> None:
    hub = ResultHub()
    task_id = uuid.uuid4()
    subscriber = _subscribed(hub, [task_id])
    hub.publish([_finished(task_id, owner=uuid.uuid4())])
    assert _sent_ids(subscriber) == []


def test_results_and_control_frames_keep_their_order() -> None:
    hub = ResultHub()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    subscriber = _subscribed(hub, [a, b, c])
    hub.publish([_finished(a), _finished(b)])
    subscriber.control({"pong": 1})
    hub.publish([_finished(c)])
    frames = []
    while (frame := subscriber.next_frame()) is not None:
        frames.append(frame)
    assert [list(frame) for frame in frames] == [["results"], ["pong"], ["results"]]
    assert [r["task_id"] for r in frames[0]["results"]] == [str(a), str(b)]


def test_a_subscriber_that_falls_behind_is_flagged_and_detach_cleans_up() -> None:
    hub = ResultHub()
    ids = [uuid.uuid4() for _ in range(10)]
    subscriber = _subscribed(hub, ids, StreamLimits(buffer_bytes=2000))
    hub.publish([_finished(task_id, value=b"x" * 300) for task_id in ids[:4]])
    assert not subscriber.overflowed
    hub.publish([_finished(task_id, value=b"x" * 300) for task_id in ids[4:8]])
    assert subscriber.overflowed
    hub.detach(subscriber)
    assert hub.watched == 0 and set(subscriber.pending) == set()


def test_frames_are_bounded_in_results() -> None:
    hub = ResultHub()
    ids = [uuid.uuid4() for _ in range(2500)]
    subscriber = _subscribed(hub, ids)
    hub.publish([_finished(task_id) for task_id in ids])
    sizes = []
    while (frame := subscriber.next_frame()) is not None:
        sizes.append(len(frame["results"]))
    assert sizes == [1000, 1000, 500]
    assert subscriber.outbox_bytes == 0


def test_a_subscription_just_after_its_task_finished_is_answered_from_memory() -> None:
    hub = ResultHub()
    done, theirs, big, later = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hub.publish([_finished(done), _finished(theirs, owner=uuid.uuid4()), _finished(big, value=b"x" * 70_000)])
    subscriber = StreamSubscriber(OWNER, StreamLimits())
    wanted = subscriber.want([done, theirs, big, later])
    hub.watch(subscriber, wanted)

    to_look_up = hub.deliver_remembered(subscriber, wanted)

    # another owner's task and a large outcome are not answered from memory: the store decides
    assert to_look_up == [theirs, big, later]
    assert _sent_ids(subscriber) == [str(done)]
    assert set(subscriber.pending) == {theirs, big, later}
    assert hub.watched == 3  # the delivered one is no longer watched


def test_the_memory_of_finished_records_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("taskfabric.forwarder.stream._REMEMBERED_RECORDS", 3)
    hub = ResultHub()
    ids = [uuid.uuid4() for _ in range(5)]
    hub.publish([_finished(task_id) for task_id in ids])
    subscriber = StreamSubscriber(OWNER, StreamLimits())
    assert hub.deliver_remembered(subscriber, subscriber.want(ids)) == ids[:2]  # the oldest were forgotten
