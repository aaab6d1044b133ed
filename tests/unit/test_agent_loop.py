"""The agent's loop without processes: `Agent` on a `MemoryTransport`, with the test playing the
managers (`FakeManagerSockets`) and no blocks (`FakeScaler`). The test drives `step()` (or one named
step) and watches the memory broker: what is acked, what reaches the result and dead-letter queues."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from taskfabric.broker_config import EndpointQueues, Topology, broker_username, new_queue_secret
from taskfabric.endpoint_agent.agent import Agent, AgentPaths
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.ledger import Ledger
from taskfabric.endpoint_agent.testing import FakeManagerSockets, FakeScaler
from taskfabric.errors import ConnectionLost, ErrorCode
from taskfabric.exit_codes import RET_CRASHED
from taskfabric.protocol import (
    Drain,
    FunctionBody,
    ManagerAccepted,
    ManagerRegister,
    Result,
    ResultBatch,
    Task,
    TaskBatch,
    TaskError,
    pack,
    unpack,
)
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, MemoryBroker, MemoryTransport, OutgoingMessage

MANAGER = b"manager-1"


class FlakyTransport(MemoryTransport):
    """A memory transport whose broker can become unreachable: publishes then fail, as
    RabbitTransport's do while it reconnects; its consumers survive (it re-subscribes)."""

    down = False

    @property
    def connected(self) -> bool:
        return super().connected and not self.down

    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[Future[None]]:
        if not self.down:
            return super().publish_many(messages)
        futures = []
        for _message in messages:
            future: Future[None] = Future()
            future.set_exception(ConnectionLost("the broker is unreachable"))
            futures.append(future)
        return futures


class Fabric:
    """The memory broker, the endpoint's queues, and the forwarder's side of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.broker = MemoryBroker()
        self.topology = Topology(prefix="unit")
        self.forwarder = MemoryTransport(self.broker, username="forwarder")
        self.forwarder.start()
        self.topology.declare_shared(self.forwarder)
        self.endpoint_id = uuid.uuid4()
        self.queues: EndpointQueues = self.topology.endpoint_queues(self.endpoint_id, new_queue_secret())
        self.topology.declare_endpoint(self.forwarder, self.queues)
        self.connection = EndpointConnection.of(
            self.endpoint_id,
            self.topology.broker_access(
                self.queues, amqp_url="amqp://unused", username=broker_username(self.endpoint_id)
            ),
        )
        self.paths = AgentPaths(tmp_path / "endpoint")
        self.paths.root.mkdir()
        self.results: list[Result] = []
        self.dead_letters: list[Delivery] = []
        self.forwarder.consume(self.queues.result_queue, self._on_result, prefetch=100)
        self.forwarder.consume(self.topology.dead_letter_queue, self._on_dead_letter, prefetch=100)

    def _on_result(self, delivery: Delivery) -> None:
        message = unpack(delivery.body)
        if isinstance(message, ResultBatch):
            self.results.extend(message.results)
        self.forwarder.ack(delivery)

    def _on_dead_letter(self, delivery: Delivery) -> None:
        self.dead_letters.append(delivery)
        self.forwarder.ack(delivery)

    def publish_tasks(self, count: int) -> list[Task]:
        function = FunctionBody(function_id=uuid.uuid4(), body=b"opaque function")
        tasks = [Task(task_id=uuid.uuid4(), function_id=function.function_id, payload=b"args") for _ in range(count)]
        message = OutgoingMessage(
            exchange=self.topology.tasks_exchange,
            routing_key=self.queues.task_queue,
            body=pack(TaskBatch(tasks=tasks, functions=[function])),
        )
        self.forwarder.publish(message).result(timeout=5)
        return tasks

    def unacked_task_messages(self) -> int:
        """Task messages delivered to the agent and not acked (RabbitMQ's messages_unacknowledged)."""
        with self.broker.lock:
            return sum(len(consumer.unacked) for consumer in self.broker.queues[self.queues.task_queue].consumers)

    def ready_task_messages(self) -> int:
        return self.forwarder.queue_depth(self.queues.task_queue)

    def agent(self, *, start: bool = True, **settings: object) -> Agent:
        config = EndpointConfig.from_mapping({"interchange_encrypted": False, **settings})
        agent = Agent(
            config,
            self.connection,
            self.paths,
            transport=FlakyTransport(self.broker, username=self.connection.username),
            sockets=FakeManagerSockets(),
            scaler=FakeScaler(),
        )
        if start:
            agent.start()
        return agent


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    fabric = Fabric(tmp_path)
    yield fabric
    fabric.forwarder.close()


@pytest.fixture
def agent(fabric: Fabric) -> Iterator[Agent]:
    agent = fabric.agent(max_retries_on_system_failure=1)
    yield agent
    agent.close()


def sockets_of(agent: Agent) -> FakeManagerSockets:
    assert isinstance(agent.sockets, FakeManagerSockets)
    return agent.sockets


def step_until(agent: Agent, predicate: Callable[[], object], what: str) -> None:
    """Run loop passes until `predicate()` holds (deliveries arrive on the transport's thread)."""

    def passed() -> object:
        agent.step()
        return predicate()

    wait_until(passed, timeout_s=10, interval_s=0.005, what=what)


def register_manager(agent: Agent, *, workers: int = 4) -> None:
    sockets = sockets_of(agent)
    sockets.from_manager(
        MANAGER,
        ManagerRegister(manager_id="m1", hostname="node", workers=workers, registration_token=agent.token),
    )
    step_until(agent, lambda: sockets.sent_to(MANAGER, ManagerAccepted), "the manager's registration")


def dispatched(agent: Agent) -> list[uuid.UUID]:
    """Task ids sent to the manager so far, in order (repeats are re-runs)."""
    return [task.task_id for batch in sockets_of(agent).sent_to(MANAGER, TaskBatch) for task in batch.tasks]


def answer(agent: Agent, task: Task, *, attempts: int = 1, error: ErrorCode | None = None) -> None:
    if error is None:
        result = Result(task_id=task.task_id, ok=True, value=b"value", attempts=attempts)
    else:
        result = Result(task_id=task.task_id, ok=False, error=TaskError(code=error, message="gone"), attempts=attempts)
    sockets_of(agent).from_manager(MANAGER, ResultBatch(results=[result]))


# --- the ack point ------------------------------------------------------------------------------


def test_a_task_message_is_acked_only_after_its_tasks_are_written_to_the_ledger(fabric: Fabric, agent: Agent) -> None:
    tasks = fabric.publish_tasks(3)
    wait_until(lambda: not agent.broker.inbound.empty(), what="the task message reaching the agent")

    agent.take_task_batches()  # staged in the ledger (not yet written) and queued to run
    assert [held.task_id for held in agent.waiting] == [task.task_id for task in tasks]
    assert agent.ledger.counts()["held"] == 0
    assert fabric.unacked_task_messages() == 1, "acked before its tasks were on disk"

    agent.flush_ledger(time.monotonic(), force=True)
    assert agent.ledger.counts()["held"] == 3
    assert fabric.unacked_task_messages() == 0
    assert fabric.ready_task_messages() == 0


def test_an_agent_that_dies_before_the_ledger_write_gets_the_message_again(fabric: Fabric, agent: Agent) -> None:
    tasks = fabric.publish_tasks(2)
    wait_until(lambda: not agent.broker.inbound.empty(), what="the task message reaching the agent")
    agent.take_task_batches()
    agent.broker.transport.close()  # the agent dies: nothing written, nothing acked
    agent.ledger.close()
    agent.ledger = Ledger(fabric.paths.root / "unused.sqlite")  # so close() at teardown has one

    assert fabric.ready_task_messages() == 1
    second = fabric.agent()
    try:
        step_until(second, lambda: second.ledger.counts()["held"] == 2, "the redelivered tasks in the ledger")
        assert {held.task_id for held in second.waiting} == {task.task_id for task in tasks}
        assert fabric.unacked_task_messages() == 0
    finally:
        second.close()


def test_a_redelivered_message_of_tasks_already_held_is_acked_without_running_them_twice(
    fabric: Fabric, agent: Agent
) -> None:
    fabric.publish_tasks(2)
    step_until(agent, lambda: agent.ledger.counts()["held"] == 2, "the tasks in the ledger")
    same = unpack(fabric_last_task_body(fabric, agent))
    assert isinstance(same, TaskBatch)
    fabric.forwarder.publish(
        OutgoingMessage(exchange=fabric.topology.tasks_exchange, routing_key=fabric.queues.task_queue, body=pack(same))
    ).result(timeout=5)
    step_until(agent, lambda: fabric.ready_task_messages() == 0 and fabric.unacked_task_messages() == 0, "the ack")
    assert len(agent.waiting) == 2


def fabric_last_task_body(fabric: Fabric, agent: Agent) -> bytes:
    """The tasks the agent holds, as the forwarder published them."""
    held = list(agent.waiting)
    return pack(
        TaskBatch(tasks=[item.task for item in held], functions=agent.functions.get({held[0].task.function_id}))
    )


# --- running, results and retries -----------------------------------------------------------------


def test_a_result_is_published_and_its_task_leaves_the_ledger_once_confirmed(fabric: Fabric, agent: Agent) -> None:
    register_manager(agent)
    (task,) = fabric.publish_tasks(1)
    step_until(agent, lambda: dispatched(agent) == [task.task_id], "the task on the manager")
    answer(agent, task)
    step_until(agent, lambda: fabric.results, "the result on the result queue")
    assert [(result.task_id, result.ok, result.attempts) for result in fabric.results] == [(task.task_id, True, 1)]
    step_until(agent, lambda: agent.ledger.counts()["held"] == 0, "the task leaving the ledger")


def test_a_lost_run_is_retried_then_failed_and_dead_lettered(fabric: Fabric, agent: Agent) -> None:
    register_manager(agent)
    (task,) = fabric.publish_tasks(1)
    step_until(agent, lambda: dispatched(agent) == [task.task_id], "the first run")
    answer(agent, task, error=ErrorCode.WORKER_LOST)
    step_until(agent, lambda: dispatched(agent) == [task.task_id] * 2, "the retry (max_retries_on_system_failure=1)")
    assert not fabric.results

    answer(agent, task, attempts=2, error=ErrorCode.WORKER_LOST)
    step_until(agent, lambda: fabric.results and fabric.dead_letters, "the error result and the dead letter")
    (result,) = fabric.results
    assert not result.ok and result.error is not None
    assert (result.error.code, result.attempts) == (ErrorCode.WORKER_LOST, 2)
    assert "gave up after 2 lost runs" in result.error.message
    (dead,) = fabric.dead_letters
    assert dead.headers["x-taskfabric-outcome-reported"] is True
    dead_batch = unpack(dead.body)
    assert isinstance(dead_batch, TaskBatch) and [t.task_id for t in dead_batch.tasks] == [task.task_id]
    assert dispatched(agent) == [task.task_id] * 2


def test_tasks_of_a_manager_that_leaves_run_again_elsewhere(fabric: Fabric, agent: Agent) -> None:
    register_manager(agent)
    tasks = fabric.publish_tasks(2)
    step_until(agent, lambda: len(dispatched(agent)) == 2, "both tasks on the manager")
    sockets_of(agent).from_manager(MANAGER, Drain(reason="node going down"))
    step_until(agent, lambda: len(agent.waiting) == 2, "the tasks back in waiting")
    assert {held.task_id for held in agent.waiting} == {task.task_id for task in tasks}
    assert all(held.attempts == 1 for held in agent.waiting)
    assert fabric.results == []


# --- the broker going away -------------------------------------------------------------------------


def test_results_made_while_the_broker_is_down_are_kept_and_republished(fabric: Fabric, agent: Agent) -> None:
    register_manager(agent)
    (task,) = fabric.publish_tasks(1)
    step_until(agent, lambda: dispatched(agent) == [task.task_id], "the task on the manager")

    transport = agent.broker.transport
    assert isinstance(transport, FlakyTransport)
    transport.down = True
    answer(agent, task)
    step_until(agent, lambda: agent.ledger.counts()["stored_results"] == 1, "the unconfirmed result stored")
    assert fabric.results == []

    transport.down = False
    step_until(agent, lambda: fabric.results, "the stored result re-published")
    assert [result.task_id for result in fabric.results] == [task.task_id]
    step_until(agent, lambda: agent.ledger.counts()["held"] == 0, "the task leaving the ledger")


def test_results_left_unconfirmed_by_an_earlier_run_are_republished_at_start(fabric: Fabric) -> None:
    (task,) = [Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"args")]
    ledger = Ledger(fabric.paths.ledger)
    ledger.record([TaskBatch(tasks=[task])])
    ledger.store_results([Result(task_id=task.task_id, ok=True, value=b"made before the crash")])
    ledger.close()

    agent = fabric.agent()
    try:
        assert not agent.waiting, "a task whose result exists must not run again"
        step_until(agent, lambda: fabric.results, "the stored result re-published")
        assert [(result.task_id, result.value) for result in fabric.results] == [
            (task.task_id, b"made before the crash")
        ]
        step_until(agent, lambda: agent.ledger.counts()["held"] == 0, "the task leaving the ledger")
    finally:
        agent.close()


def test_a_dead_scaling_thread_stops_the_agent_gracefully_with_a_named_code(
    fabric: Fabric, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure injected where the scaling thread keeps it: the loop stops the agent (tasks no
    manager has go back to the broker) and `run` returns RET_CRASHED for the supervisor."""
    agent = fabric.agent(start=False)
    scaler = agent.scaler
    assert isinstance(scaler, FakeScaler)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    fabric.publish_tasks(3)
    scaler.error = RuntimeError("the provider exploded")
    try:
        assert agent.run() == RET_CRASHED
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert "the scaling thread failed (the provider exploded)" in caplog.text
    assert fabric.ready_task_messages() >= 1  # handed back, not lost
    assert not fabric.results


def test_a_stop_signal_while_the_loop_holds_the_broker_link_s_lock_does_not_hang(agent: Agent) -> None:
    """The signal handler runs between any two bytecodes of the main thread: it only notes the
    stop, which the next pass begins (it used to pause the broker link from the handler, taking a
    lock the interrupted code could hold: the agent then hung for good, seen in CI)."""
    done = threading.Event()

    def signal_arrives_inside_the_lock() -> None:
        with agent.broker._lock:  # as in subscribe() or the consumer check
            agent._on_signal(signal.SIGTERM, None)
        done.set()

    worker = threading.Thread(target=signal_arrives_inside_the_lock, daemon=True)
    worker.start()
    assert done.wait(5), "the handler blocked on the lock its thread holds"
    assert not agent.stopping
    agent.step()
    assert agent.stopping and agent.broker.paused


# --- allow-lists (issue 13) ---------------------------------------------------------------------


def _refused_codes(fabric: Fabric) -> list[ErrorCode | None]:
    return [result.error.code if result.error else None for result in fabric.results]


def test_a_task_outside_the_configured_allow_list_is_answered_and_never_dispatched(fabric: Fabric) -> None:
    agent = fabric.agent(allowed_functions=[str(uuid.uuid4())])
    try:
        register_manager(agent)
        fabric.publish_tasks(2)
        step_until(agent, lambda: len(fabric.results) == 2, "the refusals")
        assert _refused_codes(fabric) == [ErrorCode.FUNCTION_NOT_ALLOWED] * 2
        assert dispatched(agent) == []
        step_until(agent, lambda: agent.ledger.counts()["held"] == 0, "the ledger letting go of them")
    finally:
        agent.close()


def test_the_registration_allow_list_applies_when_the_config_sets_none(fabric: Fabric) -> None:
    import dataclasses

    fabric.connection = dataclasses.replace(fabric.connection, allowed_functions=[])  # the service: nothing
    agent = fabric.agent()
    try:
        register_manager(agent)
        fabric.publish_tasks(1)
        step_until(agent, lambda: len(fabric.results) == 1, "the refusal")
        assert _refused_codes(fabric) == [ErrorCode.FUNCTION_NOT_ALLOWED]
        assert dispatched(agent) == []
    finally:
        agent.close()


def test_a_listed_function_runs(fabric: Fabric) -> None:
    function_id = uuid.uuid4()
    agent = fabric.agent(allowed_functions=[str(function_id)])
    try:
        register_manager(agent)
        task = Task(task_id=uuid.uuid4(), function_id=function_id, payload=b"args")
        message = OutgoingMessage(
            exchange=fabric.topology.tasks_exchange,
            routing_key=fabric.queues.task_queue,
            body=pack(TaskBatch(tasks=[task], functions=[FunctionBody(function_id=function_id, body=b"f")])),
        )
        fabric.forwarder.publish(message).result(timeout=5)
        step_until(agent, lambda: dispatched(agent) == [task.task_id], "the listed task's dispatch")
        assert fabric.results == []
    finally:
        agent.close()
