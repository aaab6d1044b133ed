"""CPU per task, process by process: taskfabric against Celery on one broker, in one window.

On a 2-core machine a sequential round trip cannot be shorter than the CPU its critical path
burns, and a throughput cannot be higher than 2 cores divided by the CPU every task costs in all
processes together. This measures that CPU (user + system time from /proc, per process role)
while each system runs the same three workloads, alternately (taskfabric, then Celery):

- `sequential`: `--calls` sequential no-op round trips (`submit(noop).result()`, `noop.delay().get()`);
- `throughput`: `--tasks` no-op tasks submitted at once, then collected;
- `echo`: `--echoes` echoes of one 1 MiB random bytes argument, all submitted, then collected
  (taskfabric's default Executor: the argument uploaded once and passed by reference, each result
  uploaded by its worker and pushed on the results stream).

Roles: taskfabric's forwarder, agent, manager and workers; Celery's worker processes (the prefork
parent and its children); the RabbitMQ node both use (`beam.smp`); and the client (this process:
each system's client library runs here, one at a time). The fabric is `taskfabric dev up` in a
temporary home (as `taskfabric bench`), the Celery app is benchmarks/peers/celery_app.py on the
fabric's RabbitMQ node. Figures are printed, never asserted.

    .venv/bin/python benchmarks/cpu_per_task.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from taskfabric.tools.bench import BenchConfig, _environment, _fabric, noop
from taskfabric.tools.bench_compare import DEFAULT_PEERS_DIR, CeleryPeer, _local_amqp_url
from taskfabric.tools.bench_payload import echo

_MIB = 1024 * 1024
_CLIENT = "client (this process)"
#: the fabric's RabbitMQ node (set once it is up)
_BROKER: dict[str, int | None] = {"pid": None}


def _broker_pid(amqp_url: str) -> int:
    """The process listening on the fabric's AMQP port (its private RabbitMQ node)."""
    port = urlsplit(amqp_url).port
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return int(connection.pid)
    raise RuntimeError(f"no process listens on the fabric's AMQP port {port}")


_COMMAND_ROLES = (
    ("celery_app", "celery worker processes"),
    ("agent run", "taskfabric agent"),
    ("manager run", "taskfabric manager"),
    ("taskfabric.manager.worker", "taskfabric workers"),
)


def _role(process: psutil.Process, forwarder_pid: int | None, home: str) -> str | None:
    by_pid = {os.getpid(): _CLIENT, forwarder_pid: "taskfabric forwarder", _BROKER["pid"]: "rabbitmq (beam.smp)"}
    if process.pid in by_pid:
        return by_pid[process.pid]
    try:
        line = " ".join(process.cmdline())
        if "taskfabric" in line and process.environ().get("TASKFABRIC_HOME") != home:
            return None  # another fabric's process
    except psutil.Error:
        return None
    return next((role for needle, role in _COMMAND_ROLES if needle in line), None)


def _cpu_by_role(forwarder_pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process in a role, summed per role."""
    totals: dict[str, float] = {}
    home = os.environ.get("TASKFABRIC_HOME", "")
    for process in psutil.process_iter():
        role = _role(process, forwarder_pid, home)
        if role is None:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def _measure(run: Callable[[], int], forwarder_pid: int | None, roles: tuple[str, ...]) -> dict[str, Any]:
    """Run a workload (it returns its task count); CPU ms per task of each role, and the wall time."""
    before = _cpu_by_role(forwarder_pid)
    started = time.perf_counter()
    tasks = run()
    wall = time.perf_counter() - started
    after = _cpu_by_role(forwarder_pid)
    per_task = {role: (after.get(role, 0.0) - before.get(role, 0.0)) * 1000 / tasks for role in roles}
    total = sum(per_task.values())
    return {
        "tasks": tasks,
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "cpu_ms_per_task": per_task,
        "cpu_ms_per_task_total": total,
        "ceiling_tasks_per_s_on_2_cores": 2000 / total if total else None,
    }


def _taskfabric_workloads(fabric: Any, args: argparse.Namespace) -> dict[str, Callable[[], int]]:
    from taskfabric.client import Client, Executor

    client = Client(url=fabric.url, token=fabric.token)
    executor = Executor(fabric.endpoint_id, client=client)
    for _ in range(20):
        executor.submit(noop).result(timeout=60)
    executor.submit(echo, b"warm").result(timeout=60)
    data = os.urandom(_MIB)

    def sequential() -> int:
        for _ in range(args.calls):
            executor.submit(noop).result(timeout=60)
        return args.calls

    def throughput() -> int:
        futures = [executor.submit(noop) for _ in range(args.tasks)]
        for future in futures:
            future.result(timeout=600)
        return args.tasks

    def echoes() -> int:
        futures = [executor.submit(echo, data) for _ in range(args.echoes)]
        for future in futures:
            if len(future.result(timeout=600)) != _MIB:
                raise RuntimeError("an echo came back with the wrong size")
        return args.echoes

    return {"sequential": sequential, "throughput": throughput, "echo": echoes}


def _celery_workloads(peer: CeleryPeer, args: argparse.Namespace) -> dict[str, Callable[[], int]]:
    tasks = peer._app_module  # the peer's Celery app module (noop, echo)
    for _ in range(20):
        tasks.noop.delay().get(timeout=60)
    tasks.echo.delay(b"warm").get(timeout=60)
    data = os.urandom(_MIB)

    def sequential() -> int:
        for _ in range(args.calls):
            tasks.noop.delay().get(timeout=60)
        return args.calls

    def throughput() -> int:
        results = [tasks.noop.delay() for _ in range(args.tasks)]
        for result in results:
            result.get(timeout=600)
        return args.tasks

    def echoes() -> int:
        results = [tasks.echo.delay(data) for _ in range(args.echoes)]
        for result in results:
            if len(result.get(timeout=600)) != _MIB:
                raise RuntimeError("an echo came back with the wrong size")
        return args.echoes

    return {"sequential": sequential, "throughput": throughput, "echo": echoes}


_TASKFABRIC_ROLES = (
    _CLIENT,
    "taskfabric forwarder",
    "rabbitmq (beam.smp)",
    "taskfabric agent",
    "taskfabric manager",
    "taskfabric workers",
)
_CELERY_ROLES = (_CLIENT, "rabbitmq (beam.smp)", "celery worker processes")


def _print(system: str, workload: str, figures: dict[str, Any]) -> None:
    parts = ", ".join(f"{role} {ms:.3f}" for role, ms in figures["cpu_ms_per_task"].items())
    print(
        f"{system:10} {workload:10} {figures['tasks_per_s']:9,.1f} tasks/s  "
        f"CPU {figures['cpu_ms_per_task_total']:.3f} ms/task ({parts})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2000, help="sequential round trips")
    parser.add_argument("--tasks", type=int, default=20000, help="tasks of the throughput workload")
    parser.add_argument("--echoes", type=int, default=500, help="1 MiB echoes")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    rounds: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with _fabric(BenchConfig(workers=args.workers), lambda _message: None) as fabric:
        _BROKER["pid"] = _broker_pid(_local_amqp_url())
        peer = CeleryPeer(_local_amqp_url(), args.workers, Path(DEFAULT_PEERS_DIR))
        peer.start()
        try:
            ours = _taskfabric_workloads(fabric, args)
            theirs = _celery_workloads(peer, args)
            for index in range(args.rounds):
                record: dict[str, Any] = {"round": index + 1, "taskfabric": {}, "celery": {}}
                for workload in ("sequential", "throughput", "echo"):
                    figures = _measure(ours[workload], fabric.forwarder_pid, _TASKFABRIC_ROLES)
                    record["taskfabric"][workload] = figures
                    _print("taskfabric", workload, figures)
                    figures = _measure(theirs[workload], None, _CELERY_ROLES)
                    record["celery"][workload] = figures
                    _print("celery", workload, figures)
                rounds.append(record)
        finally:
            peer.stop()
    print(
        json.dumps(
            {
                "benchmark": "cpu_per_task",
                "parameters": {**vars(args), "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]},
                "rounds": rounds,
                **_environment(),
            }
        )
    )


if __name__ == "__main__":
    main()
