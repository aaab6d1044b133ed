"""Faults on the endpoint side: killed workers, managers and agents, a poison task, a broker outage,
and tasks longer than the broker's consumer_timeout. Every task ends with exactly one reported
result or typed error; none is lost.

These tests run on a private broker node of their own (they stop it and change its settings).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfabric.broker_config import ManagementClient, RabbitNode, new_queue_secret
from taskfabric.endpoint_agent.local import LocalEndpoint, endpoints_root, start_endpoint, stop_endpoint
from taskfabric.endpoint_agent.testing import (
    FAST_CONFIG,
    AgentProcess,
    EndpointHarness,
    ResultCollector,
    TaskFactory,
    provision_endpoint,
    publish_batches,
)
from taskfabric.errors import ErrorCode
from taskfabric.protocol import EndpointState
from taskfabric.testing import wait_until
from taskfabric.testing.disk import unwritable
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(private_node: RabbitNode) -> RabbitNode:
    """The session's private node (tests/conftest.py), running: these tests stop and kill it."""
    return private_node


@pytest.fixture
def harness(node: RabbitNode, tmp_path: Path) -> Iterator[EndpointHarness]:
    info = node.start()
    admin = RabbitTransport(info.amqp_url, confirm_timeout_s=10, backoff_max_s=1.0)
    admin.start(wait_s=30)
    try:
        endpoints = EndpointHarness(admin, info.amqp_url, info.management_url, tmp_path)
        yield endpoints
        if node.is_running():
            endpoints.cleanup()
    finally:
        admin.close()  # never leave an I/O thread reconnecting to this module's node after it stops


def slow_square(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x * x


def test_a_worker_killed_mid_task_is_retried(harness: EndpointHarness) -> None:
    endpoint = harness.start()
    task_id = endpoint.run(slow_square, 6, delay=3.0)
    # its start reported: a worker runs it now (a status saying a worker is busy could be older
    # than the task, and then the kill would come before the run it is meant to interrupt)
    wait_until(lambda: task_id in endpoint.collector.started, what="the task's start reported")
    victims = endpoint.workers()
    assert victims
    for pid in victims:  # the one running the task is among them
        os.kill(pid, signal.SIGKILL)
    result = endpoint.wait([task_id], timeout_s=60)[task_id]
    assert endpoint.collector.value(result) == 36
    assert result.attempts == 2  # one lost run, one good one


def killer() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_task_that_always_kills_its_worker_ends_as_an_error_and_is_dead_lettered(harness: EndpointHarness) -> None:
    endpoint = harness.start(max_retries_on_system_failure=2)
    dead: list[Delivery] = []
    harness.admin.consume(
        harness.topology.dead_letter_queue, lambda d: (dead.append(d), harness.admin.ack(d)), prefetch=10
    )
    poison = endpoint.run(killer)
    fine = endpoint.submit([endpoint.factory.task(slow_square, i, delay=0.0) for i in range(20)])
    results = endpoint.wait([poison, *fine], timeout_s=90)
    error = results[poison].error
    assert error is not None and error.code == ErrorCode.WORKER_LOST
    assert "gave up after 3 lost runs" in error.message
    assert results[poison].attempts == 3
    assert [endpoint.collector.value(results[i]) for i in fine] == [i * i for i in range(20)]
    wait_until(lambda: dead, what="the poison task in the dead-letter queue")
    assert dead[0].headers["x-taskfabric-reason"] == error.message
    assert dead[0].message_id == str(poison)
    assert not endpoint.collector.duplicates


def test_a_killed_manager_loses_no_task(harness: EndpointHarness) -> None:
    endpoint = harness.start()
    ids = endpoint.submit([endpoint.factory.task(slow_square, i, delay=0.5) for i in range(12)])
    wait_until(
        lambda: any(s.managers == 1 and s.idle_workers == 0 for s in endpoint.collector.statuses), what="busy manager"
    )
    managers = endpoint.managers()
    assert len(managers) == 1
    os.kill(managers[0], signal.SIGKILL)
    results = endpoint.wait(ids, timeout_s=90)
    assert [endpoint.collector.value(results[i]) for i in ids] == [i * i for i in range(12)]
    assert any(result.attempts == 2 for result in results.values())  # the ones the manager held ran again
    assert not endpoint.collector.duplicates
    wait_until(lambda: len(endpoint.managers()) == 1, what="a replacement manager")


def test_a_killed_agent_loses_no_task_after_restart(harness: EndpointHarness) -> None:
    endpoint = harness.start()
    ids = endpoint.submit([endpoint.factory.task(slow_square, i, delay=0.02) for i in range(300)], per_message=25)
    wait_until(lambda: endpoint.collector.count() >= 60, timeout_s=60, what="some results")
    endpoint.agent.kill()  # kill -9 mid-run; its managers are orphaned and exit on their own
    endpoint.agent.kill_group()
    endpoint.restart_agent()
    results = endpoint.wait(ids, timeout_s=120)
    assert [endpoint.collector.value(results[i]) for i in ids] == [i * i for i in range(300)]
    # each task is reported once: duplicates from a crash window are dropped by task id (here by
    # the collector, as the forwarder does); print how many there were
    print(f"duplicate result messages after the crash: {len(endpoint.collector.duplicates)}")
    wait_until(lambda: _ledger_counts(endpoint.directory)[0] == 0, what="an empty ledger")


def _ledger_counts(directory: Path) -> tuple[int, int]:
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        held, stored = db.execute("SELECT COUNT(*), COUNT(result) FROM tasks").fetchone()
    return held, stored


def test_results_made_while_the_broker_is_down_are_kept_on_disk_and_sent_after_a_restart(
    node: RabbitNode, harness: EndpointHarness
) -> None:
    endpoint = harness.start()
    ids = endpoint.submit([endpoint.factory.task(slow_square, i, delay=2.0) for i in range(2)])
    wait_until(
        lambda: any(s.managers == 1 and s.idle_workers == 0 for s in endpoint.collector.statuses), what="tasks running"
    )
    node.stop_app()
    try:
        # the tasks finish, their results cannot be confirmed: after the agent's bounded wait they go to disk
        wait_until(
            lambda: _ledger_counts(endpoint.directory) == (2, 2), timeout_s=60, what="results stored in the ledger"
        )
        endpoint.agent.kill()
        endpoint.agent.kill_group()
    finally:
        node.start_app()
    endpoint.restart_agent()
    results = endpoint.wait(ids, timeout_s=60)
    assert sorted(endpoint.collector.value(r) for r in results.values()) == [0, 1]
    wait_until(lambda: _ledger_counts(endpoint.directory) == (0, 0), what="an empty ledger")


def test_tasks_longer_than_the_consumer_timeout_complete(node: RabbitNode, harness: EndpointHarness) -> None:
    """RabbitMQ closes the channel of a consumer that holds a delivery past `consumer_timeout`; the
    agent acks once a task is in its ledger, so a task may run far longer."""
    node.ctl("eval", "application:set_env(rabbit, consumer_timeout, 1000).")
    node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")
    try:
        # control: a consumer that holds a delivery does get cut off
        _assert_holding_a_delivery_is_cut_off(harness)
        endpoint = harness.start()
        task_id = endpoint.run(slow_square, 7, delay=5.0)
        result = endpoint.wait([task_id], timeout_s=60)[task_id]
        assert endpoint.collector.value(result) == 49
        assert result.attempts == 1
        assert not endpoint.collector.duplicates
    finally:
        # back to rabbit.app's defaults. Never unset_env: open channels read the tick interval on
        # every tick and crash (541 INTERNAL_ERROR) when it is missing
        node.ctl("eval", "application:set_env(rabbit, consumer_timeout, 1800000).")
        node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 60000).")


def _assert_holding_a_delivery_is_cut_off(harness: EndpointHarness) -> None:
    queues = harness.topology.endpoint_queues(uuid.uuid4(), new_queue_secret())
    harness.topology.declare_endpoint(harness.admin, queues)
    seen: list[Delivery] = []
    errors: list[Any] = []
    holder = RabbitTransport(harness.amqp_url)
    holder.start()
    try:
        holder.consume(queues.task_queue, seen.append, prefetch=1, on_error=errors.append)
        harness.admin.publish(
            OutgoingMessage(exchange=harness.topology.tasks_exchange, routing_key=queues.task_queue, body=b"held")
        ).result(timeout=10)
        wait_until(lambda: seen, what="the delivery")
        wait_until(lambda: errors, timeout_s=30, what="the broker closing the channel of the slow consumer")
        assert "406" in str(errors[0]) or "PRECONDITION" in str(errors[0]).upper()
    finally:
        holder.close()
        harness.topology.delete_endpoint(harness.admin, queues)


#: how long the ledger's disk stays unwritable in the disk-fault test
_DISK_FAULT_S = 15.0


def test_an_unwritable_ledger_degrades_the_agent_which_resumes_when_the_disk_heals(harness: EndpointHarness) -> None:
    """The ledger's folder becomes immutable (`chattr +i`: refused even to root) for 15 s while tasks
    flow: the agent stays up, stops taking tasks, reports itself degraded with the reason, and
    once the disk is writable again it resumes; every task ends with exactly one result."""
    endpoint = harness.start()
    before = endpoint.submit([endpoint.factory.task(slow_square, i, delay=0.01) for i in range(100)], per_message=5)
    wait_until(lambda: endpoint.collector.count() >= 20, timeout_s=60, what="some results")
    with unwritable(endpoint.directory, ["ledger.sqlite", "ledger.sqlite-wal"]):
        during = endpoint.submit(
            [endpoint.factory.task(slow_square, i, delay=0.01) for i in range(100, 200)], per_message=5
        )
        degraded = wait_until(
            lambda: [s for s in endpoint.collector.statuses if s.state == EndpointState.DEGRADED],
            timeout_s=30,
            what="a degraded status report",
        )
        assert "ledger" in degraded[0].status_reason
        assert endpoint.agent.process is not None and endpoint.agent.process.poll() is None, "the agent died"
        fault_ends = time.monotonic() + _DISK_FAULT_S
        wait_until(lambda: time.monotonic() >= fault_ends, timeout_s=_DISK_FAULT_S + 5, what="the end of the fault")
    ids = [*before, *during]
    results = endpoint.wait(ids, timeout_s=120)
    assert [endpoint.collector.value(results[i]) for i in ids] == [i * i for i in range(200)]
    assert not endpoint.collector.duplicates
    seen = len(endpoint.collector.statuses)
    wait_until(
        lambda: any(s.state == EndpointState.ONLINE for s in endpoint.collector.statuses[seen:]),
        timeout_s=30,
        what="an online status report after the fault",
    )
    assert endpoint.agent.process is not None and endpoint.agent.process.poll() is None
    wait_until(lambda: _ledger_counts(endpoint.directory)[0] == 0, what="an empty ledger")


def test_the_supervisor_restarts_a_crashed_agent_and_endpoint_status_shows_it(
    harness: EndpointHarness, tmp_home: Path
) -> None:
    """`endpoint start --detach` leaves a supervisor that restarts a crashed agent (kill -9) with
    back-off, counts the restart and its reason for `endpoint status`, and stops with the agent on
    `endpoint stop` (no restart then)."""
    name = "supervised"
    directory = endpoints_root() / name
    connection = provision_endpoint(
        admin=harness.admin,
        management_url=harness.management_url,
        amqp_url=harness.amqp_url,
        topology=harness.topology,
        endpoint_dir=directory,
        config=FAST_CONFIG,
    )
    collector = ResultCollector(harness.admin, connection)
    factory = TaskFactory()

    def run(x: int) -> Any:
        task, body = factory.task(slow_square, x, delay=0.0)
        publish_batches(harness.admin, harness.topology, connection, TaskFactory.batches([(task, body)]))
        return collector.value(collector.wait_for([task.task_id], timeout_s=60)[task.task_id])

    first = start_endpoint(name, detach=True)
    try:
        assert run(3) == 9
        os.kill(first, signal.SIGKILL)
        second = wait_until(
            lambda: (pid := LocalEndpoint(name).pid()) not in (None, first) and pid, timeout_s=60, what="a new agent"
        )
        info = LocalEndpoint(name).describe()
        assert (info["state"], info["restarts"], info["last_exit_reason"]) == (
            "running",
            1,
            "killed by signal 9 (SIGKILL)",
        )
        assert run(4) == 16  # the restarted agent works
        assert stop_endpoint(name, timeout_s=60)
        info = LocalEndpoint(name).describe()
        assert (info["state"], info["restarts"]) == ("stopped", 1)
        assert LocalEndpoint(name).supervisor_pid() is None
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)
    finally:
        stop_endpoint(name, timeout_s=30)
        AgentProcess(directory).kill_group()
        with ManagementClient(harness.management_url) as management:
            management.delete_user(connection.username)


def test_a_fatal_error_at_start_is_logged_with_its_traceback_in_agent_log(harness: EndpointHarness) -> None:
    """The reason an agent dies belongs in agent.log, not only on a console nobody reads."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = harness.start(interchange_address="127.0.0.1", interchange_port=taken.getsockname()[1])
        assert endpoint.agent.process is not None
        assert endpoint.agent.process.wait(timeout=60) != 0
    log = (endpoint.directory / "agent.log").read_text()
    assert "failed" in log and "Traceback" in log and "cannot bind the interchange" in log, log[-2000:]
