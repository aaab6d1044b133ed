"""The endpoint side from task queue to result queue: a real agent, manager and workers on a real
broker, fed in the protocol's task format (no forwarder)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from taskfabric.broker_config import ManagementClient
from taskfabric.endpoint_agent.local import LocalEndpoint, start_endpoint, stop_endpoint
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
from taskfabric.protocol import EndpointState, pack
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, OutgoingMessage


def square(x: int) -> int:
    return x * x


def test_results_of_every_kind(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start(max_result_bytes=4096)
    factory = endpoint.factory
    scale = 3

    def scaled(x: int) -> int:  # a closure
        return x * scale

    def with_kwargs(a: int, *, b: int = 0, c: str = "") -> str:
        return f"{a}-{b}-{c}"

    def fails(x: int) -> None:
        raise ValueError(f"bad input {x}")

    def big() -> bytes:
        return b"x" * 10_000

    def sleepy() -> None:
        time.sleep(30)

    squares = [factory.task(square, i) for i in range(50)]
    others = {
        "closure": factory.task(scaled, 5),
        "kwargs": factory.task(with_kwargs, 1, b=2, c="z"),
        "numpy": factory.task(np.linalg.norm, np.array([3.0, 4.0])),
        "array": factory.task(np.multiply, np.arange(4), 2),
        "raises": factory.task(fails, 9),
        "too_big": factory.task(big),
        "walltime": factory.task(sleepy, walltime_s=0.5),
    }
    endpoint.submit(squares + list(others.values()))
    results = endpoint.wait([task.task_id for task, _ in squares + list(others.values())], timeout_s=60)

    value = endpoint.collector.value
    assert [value(results[task.task_id]) for task, _ in squares] == [i * i for i in range(50)]
    got = {name: results[task.task_id] for name, (task, _) in others.items()}
    assert value(got["closure"]) == 15
    assert value(got["kwargs"]) == "1-2-z"
    assert value(got["numpy"]) == 5.0
    assert (value(got["array"]) == np.array([0, 2, 4, 6])).all()
    raised = got["raises"].error
    assert raised is not None and raised.code == ErrorCode.TASK_FAILED
    assert raised.exception_type == "builtins.ValueError"
    assert "ValueError: bad input 9" in raised.traceback and "in fails" in raised.traceback
    too_big = got["too_big"].error
    assert too_big is not None and too_big.code == ErrorCode.RESULT_TOO_LARGE and "4096 bytes" in too_big.message
    walltime = got["walltime"].error
    assert walltime is not None and walltime.code == ErrorCode.WALLTIME_EXCEEDED
    assert all(result.attempts == 1 for result in results.values())
    assert all(result.worker_python for result in results.values())
    # results are published by the endpoint's own broker user (the broker validated it)
    assert endpoint.collector.senders == {endpoint.connection.username}
    assert not endpoint.collector.duplicates


def test_a_malformed_message_is_dead_lettered_and_the_agent_keeps_running(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start()
    first = endpoint.run(square, 3)
    endpoint.wait([first])
    garbage = [b"not a message", pack(endpoint.factory.batches([endpoint.factory.task(square, 1)])[0])[:20]]
    for body in garbage:
        endpoints.admin.publish(
            OutgoingMessage(
                exchange=endpoints.topology.tasks_exchange, routing_key=endpoint.connection.task_queue, body=body
            )
        ).result(timeout=10)
    after = endpoint.run(square, 4)
    assert endpoint.collector.value(endpoint.wait([after])[after]) == 16
    dead: list[Delivery] = []
    endpoints.admin.consume(
        endpoints.topology.dead_letter_queue, lambda d: (dead.append(d), endpoints.admin.ack(d)), prefetch=10
    )
    wait_until(lambda: len(dead) == 2, what="two dead letters")
    assert sorted(d.body for d in dead) == sorted(garbage)
    assert {d.headers["x-first-death-queue"] for d in dead} == {endpoint.connection.task_queue}
    assert endpoint.agent.process is not None and endpoint.agent.process.poll() is None


def test_status_reports(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start()
    wait_until(lambda: any(s.managers == 1 for s in endpoint.collector.statuses), what="a status with one manager")
    status = next(s for s in endpoint.collector.statuses if s.managers == 1)
    assert status.endpoint_id == endpoint.connection.endpoint_id
    assert status.state == "online"
    assert status.workers == 2
    assert status.idle_workers == 2
    assert status.running_blocks + status.pending_blocks == 1
    assert status.heartbeat_period_s == 0.5


def test_a_graceful_stop_lets_running_tasks_finish(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start()

    def slow(x: int) -> int:
        time.sleep(1.5)
        return x

    ids = endpoint.submit([endpoint.factory.task(slow, i) for i in range(2)])
    wait_until(
        lambda: any(s.managers == 1 and s.idle_workers == 0 for s in endpoint.collector.statuses),
        what="both workers busy",
    )
    assert endpoint.agent.stop(timeout_s=30) == 0
    results = endpoint.wait(ids, timeout_s=5)
    assert sorted(endpoint.collector.value(r) for r in results.values()) == [0, 1]
    assert any(s.state == "draining" for s in endpoint.collector.statuses)
    wait_until(lambda: not endpoint.agent.descendants(), timeout_s=15, what="managers and workers gone")


def test_tasks_wait_in_the_queue_while_the_endpoint_is_stopped(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start()
    endpoint.wait([endpoint.run(square, 2)])
    assert endpoint.agent.stop() == 0
    ids = endpoint.submit([endpoint.factory.task(square, i) for i in range(20)])
    # the endpoint is down: its tasks wait in its queue (one message of 20 tasks)
    assert endpoints.admin.queue_depth(endpoint.connection.task_queue) == 1
    assert not set(ids) & set(endpoint.collector.snapshot())
    endpoint.restart_agent()
    results = endpoint.wait(ids)
    assert [endpoint.collector.value(results[i]) for i in ids] == [i * i for i in range(20)]


def test_the_interchange_link_is_encrypted_unless_turned_off(endpoints: EndpointHarness) -> None:
    encrypted = endpoints.start()
    key_file = encrypted.directory / "blocks" / "interchange.key"
    plain = endpoints.start(interchange_encrypted=False)
    for endpoint, x in ((encrypted, 3), (plain, 4)):
        task_id = endpoint.run(square, x)
        assert endpoint.collector.value(endpoint.wait([task_id])[task_id]) == x * x
    # the managers were told the interchange's CurveZMQ public key through a private file
    assert len(key_file.read_bytes()) == 40 and key_file.stat().st_mode & 0o777 == 0o600
    assert not (plain.directory / "blocks" / "interchange.key").exists()


def test_ten_thousand_tasks_in_large_batches(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start()
    items = [endpoint.factory.task(square, i) for i in range(10_000)]
    ids = endpoint.submit(items)
    results = endpoint.wait(ids, timeout_s=240)
    assert all(results[task_id].ok for task_id in ids)
    assert endpoint.collector.value(results[ids[-1]]) == 9999 * 9999
    assert not endpoint.collector.duplicates


def test_the_config_status_period_drives_the_reports(endpoints: EndpointHarness) -> None:
    """Issue 10 item 7.5: the period the forwarder suggested at registration used to override the
    endpoint config's `status_period_s`."""
    endpoint = endpoints.start(status_period_s=0.3, service_status_period_s=7.0)
    wait_until(lambda: len(endpoint.collector.statuses) >= 3, timeout_s=60, what="three status reports")
    assert {status.heartbeat_period_s for status in endpoint.collector.statuses} == {0.3}


def test_a_clean_stop_reports_offline_before_exit(endpoints: EndpointHarness) -> None:
    """Issue 10 item 7.5: after a clean stop the service showed the endpoint online until its
    reports went stale; the agent now says `offline` (confirmed by the broker) before it exits."""
    endpoint = endpoints.start()
    wait_until(lambda: endpoint.collector.statuses, timeout_s=60, what="a status report")
    assert endpoint.agent.stop(timeout_s=30) == 0
    wait_until(
        lambda: endpoint.collector.statuses[-1].state == EndpointState.OFFLINE, timeout_s=10, what="an offline report"
    )
    assert [s.state for s in endpoint.collector.statuses].count(EndpointState.OFFLINE) == 1


def test_stop_with_a_timeout_leaves_no_manager_or_worker(endpoints: EndpointHarness, tmp_home: Path) -> None:
    """Issue 10 item 7.6: `endpoint stop --timeout` killed the agent but left its managers and
    workers running until they missed heartbeats (~60 s)."""
    name = "stopper"
    directory = tmp_home / "endpoints" / name
    connection = provision_endpoint(
        admin=endpoints.admin,
        management_url=endpoints.management_url,
        amqp_url=endpoints.amqp_url,
        topology=endpoints.topology,
        endpoint_dir=directory,
        config=FAST_CONFIG,
    )
    collector = ResultCollector(endpoints.admin, connection)
    processes = AgentProcess(directory)  # to find the endpoint's managers and workers
    try:
        start_endpoint(name, detach=True)
        factory = TaskFactory()
        publish_batches(endpoints.admin, endpoints.topology, connection, TaskFactory.batches([factory.task(nap, 600)]))
        wait_until(
            lambda: any(s.managers == 1 and s.idle_workers < 2 for s in collector.statuses),
            timeout_s=60,
            what="the task running",
        )
        assert processes.workers()
        assert stop_endpoint(name, timeout_s=1.0)
        assert LocalEndpoint(name).pid() is None
        assert processes.descendants() == []  # at once: no wait for heartbeats to be missed
    finally:
        processes.kill_group()
        with ManagementClient(endpoints.management_url) as management:
            management.delete_user(connection.username)


def nap(seconds: float) -> None:
    time.sleep(seconds)


def test_a_graceful_stop_hands_back_the_tasks_not_started(endpoints: EndpointHarness) -> None:
    """Issue 10 item 7.4: on a graceful stop, tasks the agent holds that no manager has yet go back
    to the broker at once (and out of the ledger); only the running ones finish."""
    endpoint = endpoints.start(prefetch=0)  # managers hold only what their two workers run

    def slow(x: int) -> int:
        time.sleep(2.0)
        return x

    ids = endpoint.submit([endpoint.factory.task(slow, i) for i in range(10)])
    wait_until(
        lambda: any(s.managers == 1 and s.idle_workers == 0 for s in endpoint.collector.statuses),
        timeout_s=60,
        what="both workers busy",
    )
    assert endpoint.agent.stop(timeout_s=60) == 0
    assert endpoints.admin.queue_depth(endpoint.connection.task_queue) >= 1  # handed back
    assert _ledger_rows(endpoint.directory) == 0  # and out of the ledger
    wait_until(lambda: endpoint.collector.count() >= 2, what="the two running tasks' results")
    assert endpoint.collector.count() == 2  # nothing else started
    log = (endpoint.directory / "agent.log").read_text()
    assert "2 running tasks may finish" in log and "handed 8 tasks back to the broker" in log

    endpoint.restart_agent()
    results = endpoint.wait(ids, timeout_s=90)
    assert sorted(endpoint.collector.value(r) for r in results.values()) == list(range(10))
    assert all(result.attempts == 1 for result in results.values())
    assert not endpoint.collector.duplicates


def _ledger_rows(directory: Path) -> int:
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
