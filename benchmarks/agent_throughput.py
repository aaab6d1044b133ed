"""Broker-to-broker throughput of the endpoint side (agent + interchange + manager + workers).

Publishes N no-op tasks (in the protocol's task format, 256 per message, as the forwarder does)
straight to an endpoint's task queue on a private RabbitMQ node, runs a real agent with W workers,
and times until all N results are on the result queue. Prints one readable line and one JSON line
per run. Figures are measured, never asserted.

    .venv/bin/python benchmarks/agent_throughput.py --tasks 20000 --workers 2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from taskfabric import __version__
from taskfabric.broker_config import RabbitNode, Topology
from taskfabric.endpoint_agent.testing import (
    AgentProcess,
    ResultCollector,
    TaskFactory,
    provision_endpoint,
    publish_batches,
)
from taskfabric.testing import unique_name, wait_until
from taskfabric.transport import RabbitTransport


def noop() -> None:
    return None


def one_run(
    admin: RabbitTransport,
    info: object,
    workdir: Path,
    tasks: int,
    workers: int,
    prefetch: int | None,
    encrypted: bool = True,
) -> dict[str, float]:
    topology = Topology(prefix=unique_name("bench"))
    topology.declare_shared(admin)
    config: dict[str, object] = {
        "scaling": {"workers_per_node": workers},
        "status_period_s": 5,
        "heartbeat_period_s": 2,
        "heartbeat_threshold_s": 10,
        "interchange_encrypted": encrypted,
    }
    if prefetch is not None:
        config["prefetch"] = prefetch
    endpoint_dir = workdir / uuid.uuid4().hex[:8]
    connection = provision_endpoint(
        admin=admin,
        management_url=info.management_url,  # type: ignore[attr-defined]
        amqp_url=info.amqp_url,  # type: ignore[attr-defined]
        topology=topology,
        endpoint_dir=endpoint_dir,
        config=config,
    )
    collector = ResultCollector(admin, connection)
    agent = AgentProcess(endpoint_dir).start()
    try:
        factory = TaskFactory()
        # warm up: the agent, its manager and workers are up and the function is cached
        warm = [factory.task(noop) for _ in range(workers * 4)]
        publish_batches(admin, topology, connection, factory.batches(warm))
        collector.wait_for([task.task_id for task, _ in warm], timeout_s=60)
        items = [factory.task(noop) for _ in range(tasks)]
        batches = factory.batches(items)
        started = time.perf_counter()
        publish_batches(admin, topology, connection, batches)
        published = time.perf_counter()
        wait_until(lambda: collector.count() >= tasks + len(warm), timeout_s=600, interval_s=0.005, what="all results")
        finished = time.perf_counter()
        failed = sum(1 for result in collector.snapshot().values() if not result.ok)
    finally:
        agent.stop()
    return {
        "tasks_per_s": tasks / (finished - started),
        "elapsed_s": finished - started,
        "publish_s": published - started,
        "failed": failed,
        "duplicates": len(collector.duplicates),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=None, help="manager prefetch (default: the endpoint's auto)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--plain-interchange", action="store_true", help="turn CurveZMQ off between interchange and manager"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        node = RabbitNode(Path(tmp) / "broker")
        info = node.start()
        admin = RabbitTransport(info.amqp_url, confirm_timeout_s=60)
        admin.start()
        try:
            runs = [
                one_run(admin, info, Path(tmp), args.tasks, args.workers, args.prefetch, not args.plain_interchange)
                for _ in range(args.runs)
            ]
        finally:
            admin.close()
            node.stop()
    rates = [run["tasks_per_s"] for run in runs]
    median = statistics.median(rates)
    print(
        f"agent path, broker to broker: {args.tasks} no-op tasks, {args.workers} workers, "
        f"interchange {'plain' if args.plain_interchange else 'CurveZMQ'}: "
        f"median {median:,.0f} tasks/s over {args.runs} runs ({', '.join(f'{r:,.0f}' for r in rates)})"
    )
    print(
        json.dumps(
            {
                "benchmark": "agent_throughput",
                "tasks": args.tasks,
                "workers": args.workers,
                "prefetch": args.prefetch,
                "interchange_encrypted": not args.plain_interchange,
                "runs": runs,
                "median_tasks_per_s": round(median, 1),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "taskfabric": __version__,
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
