"""A map's time with one forwarder vs two replicas sharing PostgreSQL (issue 18 part B), printed.

One run of each, on one fabric (a broker, PostgreSQL, one endpoint agent with `--workers` workers):

1. one replica: the first forwarder alone; the client submits and streams through it;
2. two replicas: a second forwarder joins (it consumes the endpoint's result queue too, competing
   with the first: about half the results land on the first); the client submits and streams
   through the second, so every result the first ingests reaches the client only through the
   fan-out (forwarder/replicas.py), or, with `--no-fanout`, through the store poll
   (`stream_poll_s`, default 5 s);
3. HAProxy (if installed) round-robin over both, the client going through it.

Each phase: a warm-up map of 20 tasks, then `--runs` maps of `--tasks` no-op tasks with
`Executor.map`, each timed from the first submit to the last result. Prints every time, the
medians and their ratios to phase 1's.

Usage::

    .venv/bin/python benchmarks/forwarder_replicas.py                 # 1,000 tasks
    .venv/bin/python benchmarks/forwarder_replicas.py --no-fanout     # the same without the fan-out

A private RabbitMQ node is started unless TASKFABRIC_TEST_AMQP_URL and
TASKFABRIC_TEST_MANAGEMENT_URL name one; PostgreSQL as in the tests (postgres_for_tests).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from taskfabric.client import Client, Executor
from taskfabric.endpoint_agent.local import configure_endpoint, register_endpoint, start_endpoint, stop_endpoint
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess, postgres_for_tests
from taskfabric.forwarder.testing.haproxy import HAProxy
from taskfabric.testing import broker_for_tests, unique_name, wait_until


def noop(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per map (default 1,000)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the endpoint (default 2)")
    parser.add_argument("--no-fanout", action="store_true", help="replicas without the fan-out (store poll only)")
    parser.add_argument("--runs", type=int, default=3, help="maps per phase (default 3; the median is compared)")
    parser.add_argument("--poll-s", type=float, default=5.0, help="the streams' store poll (default 5 s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-replicas-") as name:
        folder = Path(name)
        os.environ["TASKFABRIC_HOME"] = str(folder / "home")
        with broker_for_tests(folder / "broker") as broker, postgres_for_tests(folder / "postgres") as database_url:
            values: dict[str, Any] = {
                "database_url": database_url,
                "amqp_url": broker.amqp_url,
                "management_url": broker.management_url,
                "topology_prefix": unique_name("bench-replicas"),
                "stream_poll_s": args.poll_s,
                "replica_fanout": not args.no_fanout,
                "endpoint_sync_period_s": 1.0,
            }
            settings = ForwarderSettings.from_mapping(values)
            create_user(settings, "bench")
            token = create_token(settings, "bench")
            with ForwarderProcess(folder / "first", values) as first:
                run(folder, first, values, token, args)


def run(folder: Path, first: ForwarderProcess, values: dict[str, Any], token: str, args: argparse.Namespace) -> None:
    endpoint_name = unique_name("bench-ep")
    configure_endpoint(
        endpoint_name,
        settings={
            "scaling": {"workers_per_node": args.workers},
            "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
        },
    )
    with Client(url=first.url, token=token) as client:
        endpoint_id = str(register_endpoint(endpoint_name, client).endpoint_id)
        start_endpoint(endpoint_name, detach=True)
        wait_until(
            lambda: (s := client.get_endpoint_status(endpoint_id))["status"] == "online" and s.get("workers"),
            timeout_s=120,
            interval_s=0.2,
            what="the endpoint online",
        )
    try:
        times = {"one replica": timed_maps(first.url, token, endpoint_id, args)}
        with ForwarderProcess(folder / "second", values) as second:
            time.sleep(2 * float(values["endpoint_sync_period_s"]))  # the second consumes the endpoint too
            label = "two replicas, client on the second" + (" (no fan-out)" if args.no_fanout else "")
            times[label] = timed_maps(second.url, token, endpoint_id, args)
            if shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists():
                with HAProxy(folder / "haproxy", [first.url, second.url]) as proxy:
                    times["two replicas behind HAProxy"] = timed_maps(proxy.url, token, endpoint_id, args)
    finally:
        stop_endpoint(endpoint_name, timeout_s=30)
    report(times, args)


def timed_maps(url: str, token: str, endpoint_id: str, args: argparse.Namespace) -> list[float]:
    times = []
    with Client(url=url, token=token) as client, Executor(endpoint_id, client=client) as executor:
        assert list(executor.map(noop, range(20), timeout=120)) == list(range(20))
        for _ in range(args.runs):
            started = time.perf_counter()
            results = list(executor.map(noop, range(args.tasks), timeout=600))
            times.append(time.perf_counter() - started)
            assert results == list(range(args.tasks))
    return times


def report(times: dict[str, list[float]], args: argparse.Namespace) -> None:
    base = statistics.median(times["one replica"])
    print(f"{args.tasks}-task map, {args.workers} workers, store poll {args.poll_s:g} s, {args.runs} runs each")
    for label, runs in times.items():
        median = statistics.median(runs)
        each = " ".join(f"{elapsed:.2f}" for elapsed in runs)
        print(f"  {label:<48} median {median:6.2f} s  {median / base:5.2f}x   (runs: {each})")
    print(f"  load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
