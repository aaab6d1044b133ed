"""Ingest-then-ack without a broker: the forwarder's `Ingestor` on a `MemoryTransport` and a
SQLite store. A result message is acked only after its results are committed; while the store
fails, the delivery stays unacked (and goes back to the queue if the forwarder stops)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from taskfabric.broker_config import broker_username
from taskfabric.errors import StoreError
from taskfabric.forwarder.consumers import Incoming
from taskfabric.forwarder.ingest import Ingestor
from taskfabric.forwarder.records import NewTask, TaskRecord, TaskStatus
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.store.tasks import TaskTable
from taskfabric.protocol import Result, ResultBatch, pack, unpack_as
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, MemoryBroker, MemoryTransport, OutgoingMessage

QUEUE = "results.unit"


class GatedTasks:
    """The real task table, whose `store_results` first waits for the test (`gate`) and fails
    while `failures_left` > 0: the store as slow or broken as the test needs."""

    def __init__(self, table: TaskTable, *, failures: int = 0) -> None:
        self._table = table
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.failures_left = failures
        self.calls = 0

    def store_results(self, batches: Sequence[tuple[uuid.UUID, Sequence[Result]]], *, now: float) -> list[TaskRecord]:
        self.calls += 1
        self.entered.set()
        self.gate.wait(10)
        if self.failures_left > 0:
            self.failures_left -= 1
            raise StoreError("the database is unreachable")
        return self._table.store_results(batches, now=now)

    def get_many(self, task_ids: Sequence[uuid.UUID], *, results: bool = True) -> dict[uuid.UUID, TaskRecord]:
        return self._table.get_many(task_ids, results=results)


class Forwarder:
    """A store with tasks waiting on one endpoint, its result queue, and an ingestor fed by it."""

    def __init__(self, tmp_path: Path, *, failures: int = 0, consume: bool = True) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
        self.endpoint_id = uuid.uuid4()
        owner = self.store.users.create("researcher").user_id
        self.task_ids = [uuid.uuid4() for _ in range(3)]
        self.store.tasks.insert(
            owner_id=owner,
            endpoint_id=self.endpoint_id,
            client_python="3.11",
            new_tasks=[NewTask(task_id=task_id, function_id=uuid.uuid4(), payload=b"") for task_id in self.task_ids],
            created_at=time.time(),
        )
        self.tasks = GatedTasks(self.store.tasks, failures=failures)
        self.store.tasks = self.tasks  # type: ignore[assignment]
        self.runner = StoreRunner()
        self.broker = MemoryBroker()
        self.transport = MemoryTransport(self.broker, username="forwarder")
        self.transport.start()
        self.transport.declare_queue(QUEUE)
        self.finished: list[TaskRecord] = []
        self.replayed: list[TaskRecord] = []
        self.ingestor = Ingestor(
            self.store,
            self.runner,
            self.transport,
            forwarder_username="forwarder",
            on_finished=self.finished.extend,
            on_replayed=self.replayed.extend,
        )
        if consume:
            self.consume()
        self.ingestor.start()

    def consume(self) -> None:
        self.transport.consume(QUEUE, self._on_delivery, prefetch=10)

    def _on_delivery(self, delivery: Delivery) -> None:
        self.ingestor.put(Incoming(self.endpoint_id, unpack_as(delivery.body, ResultBatch), delivery))

    def results(self) -> list[Result]:
        return [Result(task_id=task_id, ok=True, value=b"v") for task_id in self.task_ids]

    def endpoint_publishes_results(self) -> None:
        endpoint = MemoryTransport(self.broker, username=broker_username(self.endpoint_id))
        endpoint.start()
        body = pack(ResultBatch(results=self.results()))
        endpoint.publish(OutgoingMessage(exchange="", routing_key=QUEUE, body=body)).result(timeout=5)
        endpoint.close()

    def unacked(self) -> int:
        with self.broker.lock:
            return sum(len(consumer.unacked) for consumer in self.broker.queues[QUEUE].consumers)

    def statuses(self) -> list[TaskStatus]:
        records = self.store.tasks._table.get_many(self.task_ids)  # type: ignore[attr-defined]
        return [records[task_id].status for task_id in self.task_ids]

    def close(self) -> None:
        self.tasks.gate.set()
        self.ingestor.stop()
        self.runner.close()
        self.transport.close()
        self.store.close()


@pytest.fixture
def make_forwarder(tmp_path: Path) -> Iterator[Callable[[int], Forwarder]]:
    """Forwarder(failures=N) factory; each is closed at the end."""
    made: list[Forwarder] = []

    def make(failures: int) -> Forwarder:
        made.append(Forwarder(tmp_path / str(len(made)), failures=failures))
        return made[-1]

    yield make
    for forwarder in made:
        forwarder.close()


def test_a_result_message_is_acked_only_after_the_store_write(make_forwarder: Callable[[int], Forwarder]) -> None:
    forwarder = make_forwarder(0)
    forwarder.endpoint_publishes_results()
    assert forwarder.tasks.entered.wait(10), "the ingestor never wrote"
    assert forwarder.unacked() == 1, "acked before the results were stored"
    assert forwarder.statuses() == [TaskStatus.WAITING] * 3

    forwarder.tasks.gate.set()  # the write commits
    wait_until(lambda: forwarder.unacked() == 0, what="the ack after the store write")
    assert forwarder.statuses() == [TaskStatus.SUCCESS] * 3
    assert sorted(record.task_id for record in forwarder.finished) == sorted(forwarder.task_ids)
    assert forwarder.transport.queue_depth(QUEUE) == 0


def test_while_the_store_fails_the_delivery_stays_unacked_and_is_stored_once_it_recovers(
    make_forwarder: Callable[[int], Forwarder],
) -> None:
    forwarder = make_forwarder(1_000)
    forwarder.tasks.gate.set()
    forwarder.endpoint_publishes_results()
    wait_until(lambda: forwarder.tasks.calls >= 2, what="two failed writes")
    assert forwarder.unacked() == 1
    forwarder.tasks.failures_left = 0  # the database is back
    wait_until(lambda: forwarder.unacked() == 0, what="the ack after a write that worked")
    assert forwarder.statuses() == [TaskStatus.SUCCESS] * 3


def test_a_forwarder_stopping_while_the_store_fails_leaves_the_results_in_the_queue(
    make_forwarder: Callable[[int], Forwarder],
) -> None:
    forwarder = make_forwarder(1_000)
    forwarder.tasks.gate.set()
    forwarder.endpoint_publishes_results()
    wait_until(lambda: forwarder.tasks.calls >= 1, what="a failed write")
    forwarder.ingestor.stop()
    forwarder.transport.close()  # the forwarder is gone; its unacked delivery is requeued
    assert forwarder.broker.queues[QUEUE].ready, "the result message was lost"
    assert forwarder.statuses() == [TaskStatus.WAITING] * 3


def test_results_a_dead_replica_stored_but_did_not_ack_are_replayed_not_counted_again(tmp_path: Path) -> None:
    forwarder = Forwarder(tmp_path, consume=False)
    try:
        forwarder.tasks.gate.set()
        dead = MemoryTransport(forwarder.broker, username="forwarder")  # another replica
        dead.start()
        dead.consume(QUEUE, lambda delivery: None, prefetch=10)  # takes the message, never acks
        forwarder.endpoint_publishes_results()
        wait_until(lambda: forwarder.unacked() == 1, what="the other replica holding the message")
        forwarder.store.tasks._table.store_results(  # type: ignore[attr-defined]
            [(forwarder.endpoint_id, forwarder.results())], now=time.time()
        )  # it committed them, then was killed: the message is delivered again, to us
        dead.close()
        forwarder.consume()
        wait_until(lambda: len(forwarder.replayed) == 3, what="the re-delivered results replayed")
        assert sorted(record.task_id for record in forwarder.replayed) == sorted(forwarder.task_ids)
        assert forwarder.finished == []  # not newly finished: not counted or streamed as new
        wait_until(lambda: forwarder.unacked() == 0 and forwarder.transport.queue_depth(QUEUE) == 0, what="the ack")
    finally:
        forwarder.close()
