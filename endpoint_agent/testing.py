"""Helpers to run a real endpoint agent against a real broker without a forwarder: for the
endpoint-side tests and the agent benchmark.

`provision_endpoint` does what the forwarder does at registration (declare the endpoint's queues,
create its own broker user limited to them) and writes the endpoint folder; `AgentProcess` runs
`taskfabric agent run` as a subprocess; `TaskFactory` builds tasks the way the client does;
`ResultCollector` plays the forwarder's part of reading results (deduplicated by task id).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import psutil
import yaml

from taskfabric.broker_config import ManagementClient, Topology, broker_username, new_queue_secret, vhost_of
from taskfabric.client.serialization import value_from_result
from taskfabric.endpoint_agent.blocks import BlockActivity
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.scaler import ScalerStatus
from taskfabric.protocol import (
    EndpointStatus,
    FunctionBody,
    Message,
    Result,
    ResultBatch,
    Task,
    TaskBatch,
    TaskEvents,
    pack,
    unpack,
)
from taskfabric.testing import unique_name, wait_until
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport, Transport

__all__ = [
    "FAST_CONFIG",
    "AgentProcess",
    "EndpointHarness",
    "FakeManagerSockets",
    "FakeScaler",
    "ResultCollector",
    "RunningEndpoint",
    "TaskFactory",
    "provision_endpoint",
    "publish_batches",
]

_M = TypeVar("_M", bound=Message)


def provision_endpoint(
    *,
    admin: Transport,
    management_url: str,
    amqp_url: str,
    topology: Topology,
    endpoint_dir: Path,
    config: dict[str, Any],
    status_period_s: float | None = None,
) -> EndpointConnection:
    """Declare an endpoint's queues, create its broker user, write config.yaml and connection.json
    (`status_period_s`: the period a forwarder would suggest at registration)."""
    endpoint_id = uuid.uuid4()
    queues = topology.endpoint_queues(endpoint_id, new_queue_secret())
    topology.declare_endpoint(admin, queues)
    username = broker_username(endpoint_id)
    password = secrets.token_urlsafe(18)
    with ManagementClient(management_url, vhost=vhost_of(amqp_url)) as management:
        management.create_user(username, password)
        management.set_permissions(username, topology.endpoint_permissions(queues))
    parts = urllib.parse.urlsplit(amqp_url)
    netloc = f"{urllib.parse.quote(username)}:{urllib.parse.quote(password)}@{parts.hostname}:{parts.port}"
    broker = topology.broker_access(
        queues, amqp_url=urllib.parse.urlunsplit(parts._replace(netloc=netloc)), username=username
    )
    connection = EndpointConnection.of(endpoint_id, broker, status_period_s=status_period_s)
    endpoint_dir.mkdir(parents=True, exist_ok=True)
    connection.save(endpoint_dir / "connection.json")
    (endpoint_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return connection


class AgentProcess:
    """`taskfabric agent run --endpoint-dir DIR` as a child process."""

    def __init__(self, endpoint_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
        """`env`: the agent's whole environment (default: this process's)."""
        self.endpoint_dir = endpoint_dir
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = open(self.endpoint_dir / "agent.stdout", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskfabric", "agent", "run", "--endpoint-dir", str(self.endpoint_dir), "--quiet"],
            env=dict(self.env) if self.env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (a graceful stop) and wait."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.kill_group()

    def kill(self) -> None:
        """kill -9 the agent alone (its managers live on until they miss heartbeats)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def kill_group(self) -> None:
        """Kill the managers and workers the agent started (e.g. orphaned after a kill -9)."""
        for pid in [*self.workers(), *self.managers()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def managers(self) -> list[int]:
        """Pids of this endpoint's managers (found by the block log folder on their command line;
        providers start them detached from the agent)."""
        marker = f"--log-dir {self.endpoint_dir / 'blocks'}"
        found: list[int] = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            command = " ".join(process.info["cmdline"] or [])
            if "manager run" in command and marker in command:
                found.append(process.info["pid"])
        return found

    def workers(self) -> list[int]:
        """Pids of the worker processes of this endpoint's managers."""
        found: list[int] = []
        for pid in self.managers():
            try:
                found.extend(
                    child.pid
                    for child in psutil.Process(pid).children()
                    if "taskfabric.manager.worker" in " ".join(child.cmdline())
                )
            except psutil.Error:
                continue
        return found

    def descendants(self) -> list[int]:
        """Managers and workers of this endpoint still alive."""
        return [*self.managers(), *self.workers()]


class TaskFactory:
    """Builds tasks as the client does: a cloudpickled function body and `(args, kwargs)` payloads."""

    def __init__(self) -> None:
        self._functions: dict[int, FunctionBody] = {}

    def function(self, fn: Callable[..., Any]) -> FunctionBody:
        key = id(fn)
        if key not in self._functions:
            self._functions[key] = FunctionBody(
                function_id=uuid.uuid4(), body=cloudpickle.dumps(fn), python_version=platform.python_version()
            )
        return self._functions[key]

    def task(
        self, fn: Callable[..., Any], *args: Any, walltime_s: float | None = None, **kwargs: Any
    ) -> tuple[Task, FunctionBody]:
        body = self.function(fn)
        task = Task(
            task_id=uuid.uuid4(),
            function_id=body.function_id,
            payload=cloudpickle.dumps((args, kwargs)),
            walltime_s=walltime_s,
            submitted_at=time.time(),
        )
        return task, body

    @staticmethod
    def batches(items: list[tuple[Task, FunctionBody]], per_message: int = 256) -> list[TaskBatch]:
        batches = []
        for start in range(0, len(items), per_message):
            chunk = items[start : start + per_message]
            bodies = {body.function_id: body for _, body in chunk}
            batches.append(
                TaskBatch(
                    tasks=[task for task, _ in chunk],
                    functions=list(bodies.values()),
                    client_python=platform.python_version(),
                )
            )
        return batches


def publish_batches(
    admin: Transport, topology: Topology, connection: EndpointConnection, batches: list[TaskBatch]
) -> None:
    """Publish task batches to the endpoint's task queue, as the forwarder does."""
    futures = admin.publish_many(
        OutgoingMessage(exchange=topology.tasks_exchange, routing_key=connection.task_queue, body=pack(batch))
        for batch in batches
    )
    for future in futures:
        future.result(timeout=30)


@dataclasses.dataclass
class ResultCollector:
    """Consumes an endpoint's result queue: results by task id (first one wins, duplicates counted),
    status reports, reported task starts, and who published them."""

    transport: Transport
    connection: EndpointConnection
    results: dict[uuid.UUID, Result] = dataclasses.field(default_factory=dict)
    duplicates: dict[uuid.UUID, int] = dataclasses.field(default_factory=dict)
    statuses: list[EndpointStatus] = dataclasses.field(default_factory=list)
    #: the tasks whose start the endpoint reported (a task running longer than the report delay)
    started: set[uuid.UUID] = dataclasses.field(default_factory=set)
    senders: set[str | None] = dataclasses.field(default_factory=set)
    first_result_at: float | None = None
    last_result_at: float | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.transport.consume(self.connection.result_queue, self._on_delivery, prefetch=64)

    def _on_delivery(self, delivery: Delivery) -> None:
        message = unpack(delivery.body)
        now = time.monotonic()
        with self._lock:
            self.senders.add(delivery.user_id)
            if isinstance(message, ResultBatch):
                if self.first_result_at is None:
                    self.first_result_at = now
                self.last_result_at = now
                for result in message.results:
                    if result.task_id in self.results:
                        self.duplicates[result.task_id] = self.duplicates.get(result.task_id, 0) + 1
                    else:
                        self.results[result.task_id] = result
            elif isinstance(message, EndpointStatus):
                self.statuses.append(message)
            elif isinstance(message, TaskEvents):
                self.started.update(event.task_id for event in message.started)
        self.transport.ack(delivery)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for(self, task_ids: list[uuid.UUID], timeout_s: float = 60.0) -> dict[uuid.UUID, Result]:
        wanted = set(task_ids)
        wait_until(lambda: wanted <= set(self.snapshot()), timeout_s=timeout_s, what=f"{len(wanted)} results")
        snapshot = self.snapshot()
        return {task_id: snapshot[task_id] for task_id in task_ids}

    def snapshot(self) -> dict[uuid.UUID, Result]:
        with self._lock:
            return dict(self.results)

    @staticmethod
    def value(result: Result) -> Any:
        """The task's return value (the test plays the client, which unpickles its own results)."""
        assert result.ok and result.value is not None, result.error
        return value_from_result(result.value, worker_python=result.worker_python, task_id=result.task_id)


#: fast heartbeats and polling so faults are noticed in seconds
FAST_CONFIG: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "scaling": {"workers_per_node": 2, "strategy_period_s": 0.5, "max_idle_time_s": 120},
    "drain_timeout_s": 20.0,
}


@dataclasses.dataclass
class RunningEndpoint:
    """An endpoint with a running agent, a result collector and a task factory."""

    directory: Path
    connection: EndpointConnection
    agent: AgentProcess
    collector: ResultCollector
    admin: RabbitTransport
    topology: Topology
    factory: TaskFactory = dataclasses.field(default_factory=TaskFactory)

    def submit(self, items: list[tuple[Task, FunctionBody]], per_message: int = 256) -> list[uuid.UUID]:
        publish_batches(self.admin, self.topology, self.connection, TaskFactory.batches(items, per_message))
        return [task.task_id for task, _ in items]

    def run(self, fn: Callable[..., Any], *args: Any, walltime_s: float | None = None, **kwargs: Any) -> uuid.UUID:
        return self.submit([self.factory.task(fn, *args, walltime_s=walltime_s, **kwargs)])[0]

    def wait(self, task_ids: list[uuid.UUID], timeout_s: float = 60.0) -> dict[uuid.UUID, Result]:
        return self.collector.wait_for(task_ids, timeout_s=timeout_s)

    def restart_agent(self) -> None:
        self.agent = AgentProcess(self.directory).start()

    def managers(self) -> list[int]:
        return self.agent.managers()

    def workers(self) -> list[int]:
        return self.agent.workers()


class EndpointHarness:
    """Provisions endpoints on one broker and cleans everything up afterwards."""

    def __init__(self, admin: RabbitTransport, amqp_url: str, management_url: str, root: Path) -> None:
        self.admin = admin
        self.amqp_url = amqp_url
        self.management_url = management_url
        self.root = root
        self.topology = Topology(prefix=unique_name("ep"), delivery_limit=3)
        self.topology.declare_shared(admin)
        self.running: list[RunningEndpoint] = []
        self._provisioned: list[EndpointConnection] = []

    def start(
        self,
        *,
        service_status_period_s: float | None = None,
        agent_env: Callable[[EndpointConnection], Mapping[str, str]] | None = None,
        **overrides: Any,
    ) -> RunningEndpoint:
        """Provision an endpoint with FAST_CONFIG and `overrides` and start its agent (with the
        environment `agent_env(connection)` when given, else this process's)."""
        directory, connection = self.provision(service_status_period_s=service_status_period_s, **overrides)
        collector = ResultCollector(self.admin, connection)
        env = agent_env(connection) if agent_env is not None else None
        endpoint = RunningEndpoint(
            directory, connection, AgentProcess(directory, env=env).start(), collector, self.admin, self.topology
        )
        self.running.append(endpoint)
        return endpoint

    def provision(
        self, *, service_status_period_s: float | None = None, **overrides: Any
    ) -> tuple[Path, EndpointConnection]:
        """An endpoint's folder (FAST_CONFIG and `overrides`), queues and broker user, without an
        agent (its user is deleted at cleanup)."""
        config = {**FAST_CONFIG, **overrides}
        directory = self.root / unique_name("endpoint")
        connection = provision_endpoint(
            admin=self.admin,
            management_url=self.management_url,
            amqp_url=self.amqp_url,
            topology=self.topology,
            endpoint_dir=directory,
            config=config,
            status_period_s=service_status_period_s,
        )
        self._provisioned.append(connection)
        return directory, connection

    def cleanup(self) -> None:
        with ManagementClient(self.management_url) as management:
            for endpoint in self.running:
                process = endpoint.agent.process
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                endpoint.agent.kill_group()
            for connection in self._provisioned:
                management.delete_user(connection.username)
        self.topology.delete_shared(self.admin)


# --- in-memory stand-ins for unit tests of the agent's loop -----------------------------------


class FakeManagerSockets:
    """A `RouterSocket` without ZeroMQ: the test plays the managers. `from_manager()` queues a
    message as if a manager sent it; what the interchange sends is decoded into `sent`. A manager
    id in `unreachable` makes `send` report it gone, as the ROUTER does for a disconnected peer."""

    def __init__(self) -> None:
        self.address = "tcp://127.0.0.1:1"
        self.inbox: list[tuple[bytes, bytes]] = []
        self.sent: list[tuple[bytes, Message]] = []
        self.watched: list[int] = []
        self.unreachable: set[bytes] = set()
        self.closed = False

    def from_manager(self, manager_id: bytes, message: Message) -> None:
        self.inbox.append((manager_id, pack(message)))

    def sent_to(self, manager_id: bytes, kind: type[_M]) -> list[_M]:
        return [message for to, message in self.sent if to == manager_id and isinstance(message, kind)]

    def watch(self, fd: int) -> None:
        self.watched.append(fd)

    def poll(self, timeout_s: float) -> tuple[bool, list[int]]:
        return bool(self.inbox), []  # never sleeps: the test drives the loop

    def receive_all(self, limit: int = 10_000) -> list[tuple[bytes, bytes]]:
        taken, self.inbox = self.inbox[:limit], self.inbox[limit:]
        return taken

    def send(self, manager_id: bytes, payload: bytes) -> bool:
        if manager_id in self.unreachable:
            return False
        self.sent.append((manager_id, unpack(payload)))
        return True

    def close(self) -> None:
        self.closed = True


class FakeScaler:
    """A `BlockScaler` that starts no blocks; `end_block()` reports a block the scheduler ended."""

    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.observed: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self._ended: list[tuple[str, str]] = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def observe(self, *, waiting: int, outstanding: int, activity: Mapping[str, BlockActivity]) -> None:
        self.observed.append((waiting, outstanding))

    def end_block(self, block_id: str, reason: str) -> None:
        self._ended.append((block_id, reason))

    def ended_blocks(self) -> list[tuple[str, str]]:
        ended, self._ended = self._ended, []
        return ended

    def blocks_to_drain(self) -> list[str]:
        return []

    def status(self) -> ScalerStatus:
        return ScalerStatus()

    def failure(self) -> BaseException | None:
        """Set `error` to play a scaling thread that died."""
        return self.error
