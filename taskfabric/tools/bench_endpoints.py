"""The `endpoints` scenario of `taskfabric bench`: many registered endpoints, heartbeating.

What N endpoints cost the broker and the forwarder, measured on a running fabric:

1. registers `registered_by_api` endpoints through `POST /v1/endpoints` (as agents do: queues
   declared and proven, broker user keyed, result queue consumed) and the rest in bulk
   (forwarder/testing/bulk_endpoints.py: users by one definitions import, queues over a few
   connections, rows in one transaction), then waits until the forwarder consumes every result
   queue (it reconciles its consumers with the store every `endpoint_sync_period_s`);
2. measures the forwarder's CPU for `window_s` with nothing happening, then for `window_s` while
   every endpoint reports its status every `heartbeat_period_s`: simulated agents, i.e. a few
   connections of one broker user tagged `impersonator` (the broker lets it publish with each
   endpoint's `user_id`, which the forwarder checks) publishing `EndpointStatus` messages; no
   workers. The difference per report is the heartbeat ingest cost;
3. submits `tasks_per_endpoint` tasks to each of `submit_endpoints` endpoints chosen at random,
   and drains them: the simulated agents read the task batches and publish a result for each;
   waits until every task has its result (none lost);
4. reports registration rates, the broker's `mem_used` and object counts (management API), the
   forwarder's RSS and CPU, each before and after.

Figures are measured, never asserted (the test at N=50 checks that the scenario completes).
"""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from taskfabric.broker_config import EndpointPermissions, ManagementClient, Topology
from taskfabric.broker_config.topology import EndpointQueues
from taskfabric.errors import BrokerError
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.protocol import EndpointStatus, Result, ResultBatch, TaskBatch, pack, unpack
from taskfabric.transport import OutgoingMessage, RabbitTransport

__all__ = ["EndpointsConfig", "EndpointsTarget", "endpoints_scenario"]


def noop() -> None:
    """The task submitted to the endpoints (never run: the simulated agents answer it)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndpointsTarget:
    """A running fabric, with the administrator access the scenario needs: the forwarder's
    settings (broker, management API, store) and process, and a user's token."""

    settings: ForwarderSettings
    forwarder_url: str
    forwarder_pid: int
    token: str
    username: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndpointsConfig:
    endpoints: int = 1000
    registered_by_api: int = 50
    heartbeat_period_s: float = 5.0
    window_s: float = 30.0
    submit_endpoints: int = 100
    tasks_per_endpoint: int = 10
    publishers: int = 2
    #: remove the endpoints' broker users and queues afterwards (on a broker that outlives the run)
    cleanup: bool = False
    consumers_timeout_s: float = 900.0


#: endpoints registered in bulk between waits for the forwarder to consume them
_BULK_CHUNK = 1000
#: listing 30,000 queues with their statistics takes the management API tens of seconds
_MANAGEMENT_TIMEOUT_S = 180.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Endpoint:
    endpoint_id: uuid.UUID
    queues: EndpointQueues


def endpoints_scenario(
    target: EndpointsTarget, config: EndpointsConfig, progress: Callable[[int], None] = lambda _n: None
) -> dict[str, Any]:
    """Run the scenario (see the module docstring); returns its figures."""
    import psutil

    from taskfabric.client import Client

    settings = target.settings
    forwarder = psutil.Process(target.forwarder_pid)
    figures: dict[str, Any] = {"endpoints": config.endpoints}
    with (
        ManagementClient(
            settings.management_url,
            vhost=settings.vhost,
            ssl_context=settings.management_ssl_context,
            timeout_s=_MANAGEMENT_TIMEOUT_S,
        ) as management,
        Client(url=target.forwarder_url, token=target.token) as client,
    ):
        before = management.node_memory()
        figures["broker_mem_before_mb"] = before["mem_used"] / 2**20
        figures["forwarder_rss_before_mb"] = forwarder.memory_info().rss / 2**20
        # the simulated agents connect first: on this machine a node holding thousands of quorum
        # queues has stopped answering new AMQP connections (benchmarks/README.md)
        agents = _SimulatedAgents(settings, management, publishers=config.publishers)
        endpoints: list[_Endpoint] = []
        try:
            endpoints = _register(target, config, client, management, forwarder, figures, progress)
            figures.update(_heartbeat_cost(forwarder, agents, endpoints, config))
            figures.update(_online_share(client, endpoints))
            figures.update(_submit_and_drain(client, agents, endpoints, config, progress))
            figures.update(_snapshot("heartbeating", management, forwarder, before=before, endpoints=len(endpoints)))
        finally:
            agents.close()
            if config.cleanup:
                _clean_up(client, endpoints)
    return figures


# --- registration ---------------------------------------------------------------------------


def _register(
    target: EndpointsTarget,
    config: EndpointsConfig,
    client: Any,
    management: ManagementClient,
    forwarder: Any,
    figures: dict[str, Any],
    progress: Callable[[int], None],
) -> list[_Endpoint]:
    """Register through the API, then in bulk; wait until the forwarder consumes them all."""
    before = management.node_memory()
    by_api = min(config.registered_by_api, config.endpoints)
    started = time.perf_counter()
    endpoints = _register_by_api(client, by_api, progress)
    figures["api_registrations_per_s"] = by_api / (time.perf_counter() - started) if by_api else None
    started = time.perf_counter()
    bulk_s = 0.0
    bulk_count = 0
    remaining = config.endpoints - by_api
    while remaining > 0:
        # a chunk at a time, each consumed before the next: the forwarder opens a consumer
        # connection per `consumers_per_connection` endpoints, while the node still takes them
        chunk_started = time.perf_counter()
        bulk = _register_in_bulk(target, min(_BULK_CHUNK, remaining), progress)
        bulk_s += time.perf_counter() - chunk_started
        bulk_count += len(bulk)
        remaining -= len(bulk)
        endpoints += [_Endpoint(r.endpoint_id, _queues(target.settings, r.endpoint_id, r.queue_secret)) for r in bulk]
        _wait_consumed(management, endpoints, timeout_s=config.consumers_timeout_s)
    figures["bulk_registrations_per_s"] = bulk_count / bulk_s if bulk_count else None
    figures["registered_and_consumed_s"] = time.perf_counter() - started
    figures.update(_snapshot("registered", management, forwarder, before=before, endpoints=len(endpoints)))
    return endpoints


def _queues(settings: ForwarderSettings, endpoint_id: uuid.UUID, secret: str) -> EndpointQueues:
    return Topology(prefix=settings.topology_prefix).endpoint_queues(endpoint_id, secret)


def _register_by_api(client: Any, count: int, progress: Callable[[int], None]) -> list[_Endpoint]:
    registered = []
    run = secrets.token_hex(3)
    for index in range(count):
        answer = client.register_endpoint(f"bench-api-{run}-{index}")
        broker = answer["broker"]
        queues = EndpointQueues(
            task_queue=broker["task_queue"], result_queue=broker["result_queue"], control_queue=broker["control_queue"]
        )
        registered.append(_Endpoint(uuid.UUID(str(answer["endpoint_id"])), queues))
        progress(1)
    return registered


def _register_in_bulk(target: EndpointsTarget, count: int, progress: Callable[[int], None]) -> list[Any]:
    from taskfabric.forwarder.store import Store
    from taskfabric.forwarder.testing.bulk_endpoints import register_in_bulk

    if count <= 0:
        return []
    with Store.open(target.settings.store_url, create=False) as store:
        owner = store.users.find(target.username)
        if owner is None:
            raise LookupError(f"no user {target.username!r} in the forwarder's store")
        run = secrets.token_hex(3)
        names = [f"bench-bulk-{run}-{index}" for index in range(count)]
        return register_in_bulk(target.settings, store, owner.user_id, names, progress=progress)


def _wait_consumed(management: ManagementClient, endpoints: Sequence[_Endpoint], *, timeout_s: float) -> None:
    """Until the forwarder consumes every endpoint's result queue (per the management API, whose
    figures lag by its statistics interval)."""
    wanted = {endpoint.queues.result_queue for endpoint in endpoints}
    deadline = time.monotonic() + timeout_s
    while True:
        consumed = {name for name, count in management.consumer_counts().items() if count > 0}
        missing = len(wanted - consumed)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the forwarder consumes {len(wanted) - missing} of {len(wanted)} result queues")
        time.sleep(5.0)


def _snapshot(
    label: str, management: ManagementClient, forwarder: Any, *, before: dict[str, Any], endpoints: int
) -> dict[str, Any]:
    now = management.node_memory()
    return {
        f"broker_mem_{label}_mb": now["mem_used"] / 2**20,
        f"broker_kb_per_endpoint_{label}": (now["mem_used"] - before["mem_used"]) / endpoints / 1024,
        f"broker_queues_{label}": now.get("queues"),
        f"broker_channels_{label}": now.get("channels"),
        f"broker_connections_{label}": now.get("connections"),
        f"forwarder_rss_{label}_mb": forwarder.memory_info().rss / 2**20,
    }


# --- heartbeats -----------------------------------------------------------------------------


def _cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _heartbeat_cost(
    forwarder: Any, agents: _SimulatedAgents, endpoints: Sequence[_Endpoint], config: EndpointsConfig
) -> dict[str, Any]:
    """The forwarder's CPU over `window_s` idle, then over `window_s` of heartbeats."""
    idle_start = _cpu_s(forwarder)
    time.sleep(config.window_s)
    idle_s = _cpu_s(forwarder) - idle_start
    busy_start = _cpu_s(forwarder)
    sent, unconfirmed = agents.heartbeat(endpoints, period_s=config.heartbeat_period_s, duration_s=config.window_s)
    time.sleep(1.0)  # the last reports' ingest
    busy_s = _cpu_s(forwarder) - busy_start
    idle_share = idle_s * (config.window_s + 1.0) / config.window_s
    return {
        "forwarder_idle_cpu_s_per_s": idle_s / config.window_s,
        "heartbeats": sent,
        "heartbeats_unconfirmed": unconfirmed,
        "heartbeats_per_s": sent / config.window_s,
        "forwarder_heartbeat_cpu_s_per_s": busy_s / (config.window_s + 1.0),
        "heartbeat_ingest_cpu_ms": max(0.0, busy_s - idle_share) / sent * 1000 if sent else None,
    }


def _online_share(client: Any, endpoints: Sequence[_Endpoint]) -> dict[str, Any]:
    sample = random.sample(list(endpoints), min(20, len(endpoints)))
    online = sum(client.get_endpoint_status(endpoint.endpoint_id)["status"] == "online" for endpoint in sample)
    return {"online_of_sampled": f"{online}/{len(sample)}", "online_sampled": online, "sampled": len(sample)}


# --- tasks ----------------------------------------------------------------------------------


def _submit_and_drain(
    client: Any,
    agents: _SimulatedAgents,
    endpoints: Sequence[_Endpoint],
    config: EndpointsConfig,
    progress: Callable[[int], None],
) -> dict[str, Any]:
    chosen = random.sample(list(endpoints), min(config.submit_endpoints, len(endpoints)))
    function_id = client.register_function(noop)
    started = time.perf_counter()
    task_ids: list[uuid.UUID] = []
    expected: dict[uuid.UUID, int] = {}
    for endpoint in chosen:
        batch = client.create_batch()
        for _ in range(config.tasks_per_endpoint):
            batch.add(function_id)
        task_ids.extend(client.batch_run(endpoint.endpoint_id, batch))
        expected[endpoint.endpoint_id] = config.tasks_per_endpoint
    submitted = time.perf_counter()
    answered = agents.drain(chosen, expected, timeout_s=120.0)
    missing, failed = _wait_results(client, task_ids, timeout_s=120.0)
    finished = time.perf_counter()
    progress(len(chosen))
    return {
        "tasks": len(task_ids),
        "tasks_answered_by_agents": answered,
        "tasks_lost": missing,
        "tasks_failed": failed,
        "submit_s": submitted - started,
        "drain_s": finished - submitted,
    }


def _wait_results(client: Any, task_ids: Sequence[uuid.UUID], *, timeout_s: float) -> tuple[int, int]:
    """Until every task has an outcome; returns (still pending, failed)."""
    from taskfabric.protocol import TaskStatus

    deadline = time.monotonic() + timeout_s
    remaining = list(task_ids)
    failed = 0
    while remaining and time.monotonic() < deadline:
        outcomes = client.get_batch_result(remaining)
        still = []
        for task_id in remaining:
            outcome = outcomes.get(task_id, {"pending": True})
            if outcome["pending"]:
                still.append(task_id)
            elif outcome.get("status") != TaskStatus.SUCCESS:
                failed += 1
        remaining = still
        if remaining:
            time.sleep(0.2)
    return len(remaining), failed


# --- the simulated agents -------------------------------------------------------------------


class _SimulatedAgents:
    """A few connections of one broker user tagged `impersonator`, acting for every endpoint:
    status reports and results published with the endpoint's own `user_id`, task batches read
    with `basic.get` (the user may read every task queue of this topology)."""

    def __init__(self, settings: ForwarderSettings, management: ManagementClient, *, publishers: int) -> None:
        self._topology = Topology(prefix=settings.topology_prefix)
        self._management = management
        self.username = f"taskfabric-bench-agents-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(18)
        management.create_user(self.username, password, tags="impersonator")
        management.set_permissions(
            self.username,
            EndpointPermissions(
                configure="^$",
                write=f"^{re.escape(self._topology.results_exchange)}$",
                read=f"^{re.escape(settings.topology_prefix)}\\.tasks\\..*$",
            ),
        )
        url = _with_credentials(settings.amqp_url, self.username, password)
        self._transports = [
            RabbitTransport(url, ssl_context=settings.broker_ssl_context, connection_name=f"bench-agents-{index}")
            for index in range(max(1, publishers))
        ]
        for transport in self._transports:
            transport.start(wait_s=settings.broker_connect_timeout_s)

    def close(self) -> None:
        for transport in self._transports:
            transport.close()
        self._management.delete_user(self.username)

    def heartbeat(self, endpoints: Sequence[_Endpoint], *, period_s: float, duration_s: float) -> tuple[int, int]:
        """Every endpoint reports `online` every `period_s`, for `duration_s`; returns how many
        reports the broker confirmed and how many it did not (a broker too busy to confirm in
        time: counted, and the publisher goes on, as an agent would)."""
        shares = [endpoints[index :: len(self._transports)] for index in range(len(self._transports))]
        counts = [0] * len(shares)
        unconfirmed = [0] * len(shares)
        stop_at = time.monotonic() + duration_s

        def run(index: int) -> None:
            transport = self._transports[index]
            while time.monotonic() < stop_at:
                cycle_start = time.monotonic()
                futures = transport.publish_many(self._status(endpoint, period_s) for endpoint in shares[index])
                for future in futures:
                    try:
                        future.result(timeout=60)
                    except (BrokerError, TimeoutError):
                        unconfirmed[index] += 1
                    else:
                        counts[index] += 1
                time.sleep(max(0.0, min(period_s - (time.monotonic() - cycle_start), stop_at - time.monotonic())))

        threads = [
            threading.Thread(target=run, args=(index,), name=f"heartbeats-{index}") for index in range(len(shares))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts), sum(unconfirmed)

    def _status(self, endpoint: _Endpoint, period_s: float) -> OutgoingMessage:
        report = EndpointStatus(
            endpoint_id=endpoint.endpoint_id,
            sent_at=time.time(),
            state="online",
            heartbeat_period_s=period_s,
            hostname="bench-simulated",
        )
        return self._outgoing(endpoint, pack(report))

    def _outgoing(self, endpoint: _Endpoint, body: bytes) -> OutgoingMessage:
        return OutgoingMessage(
            exchange=self._topology.results_exchange,
            routing_key=endpoint.queues.result_queue,
            body=body,
            user_id=f"ep-{endpoint.endpoint_id}",
        )

    def drain(self, endpoints: Sequence[_Endpoint], expected: dict[uuid.UUID, int], *, timeout_s: float) -> int:
        """Answer the tasks waiting in the endpoints' task queues (`expected` per endpoint) with
        successful results; returns how many were answered."""
        from taskfabric.client.serialization import serialize_data

        value = serialize_data(None)
        transport = self._transports[0]
        answered = 0
        waiting = {endpoint.endpoint_id: endpoint for endpoint in endpoints}
        left = dict(expected)
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for endpoint_id, endpoint in list(waiting.items()):
                body = transport.take_one(endpoint.queues.task_queue)
                if body is None:
                    continue
                batch = unpack(body)
                if not isinstance(batch, TaskBatch):
                    continue
                now = time.time()
                results = [
                    Result(task_id=task.task_id, ok=True, value=value, received_at=now, started_at=now, finished_at=now)
                    for task in batch.tasks
                ]
                transport.publish(self._outgoing(endpoint, pack(ResultBatch(results=results)))).result(timeout=60)
                answered += len(results)
                left[endpoint_id] -= len(results)
                if left[endpoint_id] <= 0:
                    del waiting[endpoint_id]
        return answered


def _with_credentials(amqp_url: str, username: str, password: str) -> str:
    parts = urllib.parse.urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    user = urllib.parse.quote(username, safe="")
    netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{host}{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- cleanup --------------------------------------------------------------------------------


def _clean_up(client: Any, endpoints: Sequence[_Endpoint]) -> None:
    """Delete the endpoints through the API: the forwarder stops consuming them, deletes their
    queues and broker users, and forgets them."""
    for endpoint in endpoints:
        client.delete_endpoint(endpoint.endpoint_id)
