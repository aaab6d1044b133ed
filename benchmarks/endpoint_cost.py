"""What one registered endpoint costs the broker, part by part.

On a broker node of its own (never a shared one: it adds and removes thousands of queues and
users), for `--endpoints` N endpoints it adds, one part at a time, what registration and a running
agent make, and reads the node's memory after each part (management API `/api/nodes/<node>/memory`,
computed on request):

1. queues: each endpoint's task, control and result quorum queues and their bindings
   (`Topology.declare_endpoint`, as registration does);
2. users: its broker user `ep-<id>` and permissions (as `AdminBrokerLink.issue_credentials`);
3. consumers: the forwarder's consumer of its result queue, one channel each, spread over
   connections of `consumers_per_connection` (forwarder/consumer_pool.py);
4. agents: for `--agents` of them, an agent's own connection (its user) consuming its task and
   control queues and publishing one status report, as endpoint_agent/broker_link.py does.

Prints per-endpoint (per-agent) figures and one JSON line; removes everything afterwards. Figures
are measured, never asserted.

    taskfabric broker up --dir /tmp/ep-broker --json     # a private node
    .venv/bin/python benchmarks/endpoint_cost.py --amqp-url ... --management-url ... --endpoints 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from collections.abc import Callable
from typing import Any

from taskfabric import __version__
from taskfabric.broker_config import ManagementClient, Topology, broker_username, new_queue_secret, vhost_of
from taskfabric.broker_config.topology import EndpointQueues
from taskfabric.forwarder.consumer_pool import ConsumerConnections
from taskfabric.protocol import EndpointStatus, pack
from taskfabric.transport import ConsumerHandle, Delivery, OutgoingMessage, RabbitTransport, Transport


def node_memory(management: ManagementClient, node_dir: str | None = None) -> dict[str, int]:
    """The node's memory now, by category (bytes), plus `total` (their sum, allocator slack
    left out). With
    `node_dir` (a node started by `taskfabric broker up --dir`), every Erlang process is garbage
    collected first: the figures are then what the parts hold, not garbage not yet collected."""
    if node_dir:
        from pathlib import Path

        from taskfabric.broker_config.node import RabbitNode

        RabbitNode(Path(node_dir)).ctl("eval", "[erlang:garbage_collect(P) || P <- erlang:processes()], ok.")
    http: Any = management._http  # a read the client has no method for
    node = http.get("/nodes").json()[0]["name"]
    memory = http.get(f"/nodes/{node}/memory").json()["memory"]
    categories = {key: value for key, value in memory.items() if isinstance(value, int) and key not in _NOT_USED}
    categories["total"] = sum(categories.values())
    return categories


#: allocator slack, not memory any part holds (it varies with the allocators' fragmentation)
_NOT_USED = frozenset({"allocated_unused", "reserved_unallocated", "strategy"})


class Stage:
    """Runs one part and records its time and the node's memory growth."""

    def __init__(self, management: ManagementClient, node_dir: str | None) -> None:
        self._management = management
        self._node_dir = node_dir
        self.figures: dict[str, Any] = {}
        self._before = node_memory(management, node_dir)
        self.baseline_mb = self._before["total"] / 2**20

    def run(self, name: str, count: int, part: Callable[[], None]) -> None:
        started = time.perf_counter()
        part()
        elapsed = time.perf_counter() - started
        time.sleep(2)  # let queue and channel processes settle
        after = node_memory(self._management, self._node_dir)
        growth = {key: after[key] - self._before.get(key, 0) for key in after}
        top = sorted(((value, key) for key, value in growth.items() if key != "total"), reverse=True)[:3]
        self.figures[name] = {
            "count": count,
            "per_s": count / elapsed,
            "kb_each": growth["total"] / count / 1024,
            "largest_kb_each": {key: round(value / count / 1024, 1) for value, key in top},
        }
        self._before = after
        print(
            f"{name:10s} {count:6d} in {elapsed:6.1f} s ({count / elapsed:7.0f}/s): "
            f"{growth['total'] / count / 1024:7.1f} KB each "
            f"({', '.join(f'{key} {value / count / 1024:.1f}' for value, key in top)})",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default=os.environ.get("TASKFABRIC_BENCH_AMQP_URL"), required=False)
    parser.add_argument("--management-url", default=os.environ.get("TASKFABRIC_BENCH_MANAGEMENT_URL"))
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--consumers-per-connection", type=int, default=1000)
    parser.add_argument("--node-dir", default=None, help="the node's --dir: garbage-collect before each reading")
    parser.add_argument("--classic", action="store_true", help="declare classic queues instead (for comparison)")
    args = parser.parse_args()
    if not args.amqp_url or not args.management_url:
        parser.error("give --amqp-url and --management-url of a private node (taskfabric broker up --json)")
    topology = Topology(prefix=f"cost-{uuid.uuid4().hex[:8]}")
    admin = RabbitTransport(args.amqp_url, connection_name="endpoint-cost")
    admin.start(wait_s=15)
    management = ManagementClient(args.management_url, vhost=vhost_of(args.amqp_url), timeout_s=120)
    topology.declare_shared(admin)
    if args.classic:
        topology = _ClassicTopology(prefix=topology.prefix)
    endpoints = [(uuid.uuid4(), new_queue_secret()) for _ in range(args.endpoints)]
    queues = [topology.endpoint_queues(endpoint_id, secret) for endpoint_id, secret in endpoints]
    passwords: dict[uuid.UUID, str] = {}
    stage = Stage(management, args.node_dir)
    pool = ConsumerConnections(
        admin,
        per_connection=args.consumers_per_connection,
        open_transport=lambda index: RabbitTransport(
            args.amqp_url, connection_name=f"endpoint-cost-{index}", channel_max=args.consumers_per_connection + 2
        ),
    )
    handles: list[ConsumerHandle] = []
    agents: list[Transport] = []
    try:
        print(f"node memory before: {stage.baseline_mb:.0f} MB", flush=True)
        stage.run("queues", len(queues), lambda: [topology.declare_endpoint(admin, each) for each in queues])
        stage.run("users", len(queues), lambda: _users(management, topology, endpoints, queues, passwords))
        stage.run("consumers", len(queues), lambda: handles.extend(_consumers(pool, queues)))
        count = min(args.agents, len(endpoints))
        stage.run(
            "agents",
            count,
            lambda: agents.extend(_agents(args.amqp_url, topology, endpoints, queues, passwords, count)),
        )
        record = {
            "benchmark": "endpoint_cost",
            "endpoints": args.endpoints,
            "node_memory_before_mb": round(stage.baseline_mb, 1),
            **stage.figures,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "taskfabric": __version__,
            "rabbitmq": management.overview().get("rabbitmq_version"),
            "date": time.strftime("%Y-%m-%d"),
            "load": os.getloadavg()[0],
        }
        print(json.dumps(record), flush=True)
    finally:
        for agent in agents:
            agent.close()
        for handle in handles:
            handle.cancel()
        pool.close()
        for (endpoint_id, _secret), each in zip(endpoints, queues, strict=True):
            management.delete_user(broker_username(endpoint_id))
            topology.delete_endpoint(admin, each)
        topology.delete_shared(admin)
        admin.close()
        management.close()
    return 0


class _ClassicTopology(Topology):
    """For comparison only: the same topology with classic durable queues."""

    def queue_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "classic", "x-dead-letter-exchange": self.dead_letter_exchange}


def _users(
    management: ManagementClient,
    topology: Topology,
    endpoints: list[tuple[uuid.UUID, str]],
    queues: list[EndpointQueues],
    passwords: dict[uuid.UUID, str],
) -> None:
    for (endpoint_id, _secret), each in zip(endpoints, queues, strict=True):
        password = uuid.uuid4().hex
        management.create_user(broker_username(endpoint_id), password)
        management.set_permissions(broker_username(endpoint_id), topology.endpoint_permissions(each))
        passwords[endpoint_id] = password


def _consumers(pool: ConsumerConnections, queues: list[EndpointQueues]) -> list[ConsumerHandle]:
    def ignore(delivery: Delivery) -> None:
        pool.ack(delivery)

    return [pool.consume(each.result_queue, ignore, prefetch=32) for each in queues]


def _agents(
    amqp_url: str,
    topology: Topology,
    endpoints: list[tuple[uuid.UUID, str]],
    queues: list[EndpointQueues],
    passwords: dict[uuid.UUID, str],
    count: int,
) -> list[Transport]:
    """`count` agent-like connections: each its endpoint's user, consuming its task and control
    queues, one confirmed status report published."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(amqp_url)
    opened: list[Transport] = []
    for (endpoint_id, _secret), each in list(zip(endpoints, queues, strict=True))[:count]:
        netloc = (
            f"{quote(broker_username(endpoint_id), safe='')}:{passwords[endpoint_id]}@{parts.hostname}:{parts.port}"
        )
        agent = RabbitTransport(urlunsplit(parts._replace(netloc=netloc)), connection_name=f"agent-{endpoint_id}")
        agent.start(wait_s=15)
        opened.append(agent)
        agent.consume(each.task_queue, agent.ack, prefetch=16)
        agent.consume(each.control_queue, agent.ack, prefetch=16)
        status = EndpointStatus(endpoint_id=endpoint_id, sent_at=time.time(), state="online", heartbeat_period_s=30)
        agent.publish(
            OutgoingMessage(
                exchange=topology.results_exchange,
                routing_key=each.result_queue,
                body=pack(status),
                user_id=broker_username(endpoint_id),
            )
        ).result(timeout=15)
    return opened


if __name__ == "__main__":
    raise SystemExit(main())
