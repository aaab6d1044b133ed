"""The fault campaign's fabric (used by tests/faults/): a private RabbitMQ node, a real forwarder
process and real endpoint agents (under their supervisors), with a `FaultProxy` between the forwarder and the
broker and another between the agents and the broker. A second endpoint ("other") talks to the
broker directly, so its tasks' latency during an agent-side fault can be measured.

`Campaign.run_case(...)` is the shape of every case: submit half the workload through the public
`Executor`, wait until results flow, inject the fault, submit the other half, hold the fault,
heal it, drain with a bounded wait, print one line of counts (see `taskfabric.testing.history`)
and fail on any lost, reported-twice, wrong or pending task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import sqlite3
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from taskfabric.broker_config import RabbitNode
from taskfabric.client import Client, Executor
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.endpoint_agent.testing import AgentProcess
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.protocol import EndpointState
from taskfabric.testing import unique_name, wait_until
from taskfabric.testing.history import CaseCounts, History, attributable_task
from taskfabric.testing.proxy import FaultProxy

__all__ = ["DRAIN_BOUND_S", "ENDPOINT_SETTINGS", "Campaign", "Fault", "assert_no_violation", "hold"]

#: each case's drain bound: an accepted task without an outcome by then is "pending forever"
DRAIN_BOUND_S = 150.0

ENDPOINT_SETTINGS: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "drain_timeout_s": 10.0,
    "max_retries_on_system_failure": 2,
    "consumer_check_period_s": 1.0,
    "scaling": {"workers_per_node": 2, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _with_port(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def hold(seconds: float) -> None:
    """Keep a fault in place for `seconds` (the fault's duration, not a wait for a condition)."""
    threading.Event().wait(seconds)


@dataclasses.dataclass
class Fault:
    """What a case does to the fabric: `inject`, hold for `hold_s`, `heal`."""

    inject: Callable[[], object]
    heal: Callable[[], object] = lambda: None
    hold_s: float = 0.0


class Campaign:
    def __init__(self, node: RabbitNode, folder: Path, *, queue_type: str = "quorum") -> None:
        self.node = node
        self.queue_type = queue_type
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        info = node.start()
        self.broker_port = urllib.parse.urlsplit(info.amqp_url).port or 5672
        self.forwarder_proxy = FaultProxy(self.broker_port, lifetime_s=1800).start()
        self.agent_proxy = FaultProxy(self.broker_port, lifetime_s=1800).start()
        self.values: dict[str, Any] = {
            "port": _free_port(),  # a restarted forwarder keeps its URL
            "database_url": f"sqlite:///{folder / 'fw.db'}",
            "amqp_url": _with_port(info.amqp_url, self.forwarder_proxy.port),
            # the node's own vhost: endpoint users have permissions there only
            "endpoint_amqp_url": f"amqp://127.0.0.1:{self.agent_proxy.port}/{urllib.parse.quote(info.vhost, safe='')}",
            "management_url": info.management_url,
            "topology_prefix": unique_name("faults"),
            "status_period_s": 0.5,
            "endpoint_offline_after_s": 3.0,
            "status_flush_s": 0.2,
            "confirm_timeout_s": 10.0,
            "max_batch_tasks": 3000,
            "auth": {"cache_max_age_s": 1.0},
            "queue_check_period_s": 2.0,
            "queue_type": queue_type,
        }
        self.settings = ForwarderSettings.from_mapping(self.values)
        self.forwarder = ForwarderProcess(folder / "forwarder", self.values).start()
        self.username = unique_name("researcher")
        create_user(self.settings, self.username)
        self.token = create_token(self.settings, self.username)
        self.main = self._endpoint("main", direct=False)
        self.other = self._endpoint("other", direct=True)
        self.summary: list[CaseCounts] = []

    # --- parts --------------------------------------------------------------------------

    def client(self, token: str | None = None) -> Client:
        return Client(url=self.forwarder.url, token=token or self.token)

    def _endpoint(self, name: str, *, direct: bool) -> str:
        configure_endpoint(name, settings=ENDPOINT_SETTINGS)
        with self.client() as client:
            connection = register_endpoint(name, client)
            if direct:  # this one bypasses the agents' proxy
                path = LocalEndpoint(name).paths.connection
                direct_url = _with_port(connection.amqp_url, self.broker_port)
                dataclasses.replace(connection, amqp_url=direct_url).save(path)
            start_endpoint(name, detach=True)
            self.wait_online(client, str(connection.endpoint_id))
        return str(connection.endpoint_id)

    @staticmethod
    def wait_online(client: Client, endpoint_id: str) -> None:
        wait_until(
            lambda: (
                (s := client.get_endpoint_status(endpoint_id))["status"] == EndpointState.ONLINE and s.get("workers")
            ),
            timeout_s=90,
            interval_s=0.2,
            what=f"endpoint {endpoint_id} online with workers",
        )

    def agent(self, name: str = "main") -> AgentProcess:
        return AgentProcess(LocalEndpoint(name).paths.root)

    def endpoint_folder(self, name: str = "main") -> Path:
        return LocalEndpoint(name).paths.root

    def agent_pid(self, name: str = "main") -> int | None:
        return LocalEndpoint(name).pid()

    def stored_tasks(self) -> int:
        """Task rows in the forwarder's store (read directly from its SQLite file)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.folder / 'fw.db'}?mode=ro", uri=True)) as db:
            count: int = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            return count

    def restart_forwarder(self) -> None:
        self.forwarder.stop()
        self.forwarder = ForwarderProcess(self.folder / "forwarder", self.values).start()

    def connection(self, name: str = "main") -> EndpointConnection:
        return EndpointConnection.load(LocalEndpoint(name).paths.connection)

    # --- a case -------------------------------------------------------------------------

    def run_case(
        self,
        case: str,
        fault: Fault,
        *,
        tasks: int = 150,
        delay_s: float = 0.01,
        measure_other: bool = False,
        poison: bool = False,
        token: str | None = None,
        before_fault: int | None = None,
        fault_after_submit: bool = False,
        annotate: Callable[[CaseCounts], None] | None = None,
    ) -> CaseCounts:
        history = History(case, self.folder / "histories")
        latencies: list[float] = []
        first_half = tasks // 2 if before_fault is None else before_fault
        with self.client(token) as client, Executor(self.main, client=client) as executor:
            history.submit(executor, first_half, delay_s=delay_s)
            if poison:
                history.submit_poison(executor)
            wait_until(
                lambda: sum(item.future.done() for item in history.submitted) >= min(10, first_half),
                timeout_s=90,
                what=f"{case}: results flowing before the fault",
            )
            if fault_after_submit:  # e.g. to cut a large submit request short
                history.submit(executor, tasks - first_half, delay_s=delay_s)
                fault.inject()
            else:
                fault.inject()
                history.submit(executor, tasks - first_half, delay_s=delay_s)
            with self._measuring_other(latencies, enabled=measure_other):
                hold(fault.hold_s)
                fault.heal()
            with self.client() as checker:
                counts = history.check(checker, bound_s=DRAIN_BOUND_S)
            executor.shutdown(wait=False, cancel_futures=True)
        if measure_other:
            counts.notes["other_endpoint_tasks"] = len(latencies)
            if latencies:
                counts.notes["other_latency_median_s"] = round(statistics.median(latencies), 3)
                counts.notes["other_latency_max_s"] = round(max(latencies), 3)
        if annotate is not None:
            annotate(counts)
        print(counts.line())
        with open(self.folder.parent / "campaign-summary.txt", "a") as summary:
            summary.write(counts.line() + "\n")
        self.summary.append(counts)
        return counts

    @contextlib.contextmanager
    def _measuring_other(self, latencies: list[float], *, enabled: bool) -> Iterator[None]:
        """While the fault holds, run one task at a time on the other endpoint and time each."""
        if not enabled:
            yield
            return
        stop = threading.Event()
        runs_file = str(self.folder / "other.runs")

        def measure() -> None:
            with self.client() as client, Executor(self.other, client=client) as executor:
                while not stop.is_set():
                    started = time.monotonic()
                    executor.submit(attributable_task, "other", runs_file).result(timeout=60)
                    latencies.append(time.monotonic() - started)

        thread = threading.Thread(target=measure, name="other-endpoint", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(90)

    def close(self) -> None:
        for name in ("main", "other"):
            with contextlib.suppress(Exception):
                stop_endpoint(name, timeout_s=30)
            self.agent(name).kill_group()
        self.forwarder.stop()
        self.forwarder_proxy.stop()
        self.agent_proxy.stop()


def assert_no_violation(counts: CaseCounts) -> None:
    assert counts.violations == 0, counts.line()
    assert counts.accepted > 0, counts.line()
