"""Forwarder throughput against a real broker and SQLite (or PostgreSQL), printed as figures.

1. submit: tasks/s accepted through HTTP, msgpack bodies of `--batch` tasks (default 1,000), from
   `--clients` concurrent clients; then the forwarder's RSS with that backlog waiting.
2. ingest: results/s stored from the broker: a fake endpoint (the endpoint's own credentials)
   publishes `ResultBatch` messages of 256 results for every submitted task; the clock stops when
   the store holds them all.

Usage::

    .venv/bin/python benchmarks/forwarder_submit.py                 # private broker, SQLite
    .venv/bin/python benchmarks/forwarder_submit.py --tasks 200000 --clients 2
    .venv/bin/python benchmarks/forwarder_submit.py --database-url postgresql+psycopg://postgres@127.0.0.1/test

A private RabbitMQ node is started in a temporary directory unless TASKFABRIC_TEST_AMQP_URL and
TASKFABRIC_TEST_MANAGEMENT_URL name one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgpack
import psutil

from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.records import TaskStatus
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi, ForwarderProcess
from taskfabric.protocol import Result, ResultBatch, pack
from taskfabric.testing import broker_for_tests, unique_name, wait_until
from taskfabric.transport import OutgoingMessage

RESULTS_PER_MESSAGE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks to submit (default 100,000)")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per HTTP request (default 1,000)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent submitting clients (default 2)")
    parser.add_argument("--payload-bytes", type=int, default=100, help="bytes per task payload (default 100)")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-") as folder, broker_for_tests(Path(folder) / "broker") as broker:
        database_url = args.database_url or f"sqlite:///{Path(folder) / 'forwarder.db'}"
        values = {
            "database_url": database_url,
            "amqp_url": broker.amqp_url,
            "management_url": broker.management_url,
            "topology_prefix": unique_name("bench"),
        }
        settings = ForwarderSettings.from_mapping(values)
        create_user(settings, "bench")
        token = create_token(settings, "bench")
        with ForwarderProcess(Path(folder) / "forwarder", values) as process:
            run(process, settings, token, args)


def run(process: ForwarderProcess, settings: ForwarderSettings, token: str, args: argparse.Namespace) -> None:
    with ForwarderApi(process.url, token) as api:
        registration = api.register_endpoint("bench")
        function_id = api.register_function(b"benchmark function body" * 40)
    endpoint_id = registration["endpoint_id"]
    requests = args.tasks // args.batch
    payload = os.urandom(args.payload_bytes)
    body = msgpack.packb(
        {"tasks": [{"function_id": function_id, "payload": payload}] * args.batch, "client_python": "3.11.7"}
    )
    forwarder = psutil.Process(process.pid)
    cpu_before = forwarder.cpu_times()
    print(
        f"forwarder {process.url}  store {settings.store_url.split(':')[0]}  broker {settings.amqp_url.split('@')[-1]}"
    )
    print(
        f"submitting {requests * args.batch:,} tasks: {requests} requests of {args.batch} "
        f"({args.payload_bytes} B payloads), {args.clients} clients"
    )

    task_ids: list[str] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        with ForwarderApi(process.url, token) as session:
            for _ in range(count):
                response = session.http.post(
                    f"/v1/endpoints/{endpoint_id}/tasks", content=body, headers={"Content-Type": "application/msgpack"}
                )
                response.raise_for_status()
                ids = msgpack.unpackb(response.content)["task_ids"]
                with lock:
                    task_ids.extend(ids)

    shares = [requests // args.clients + (1 if i < requests % args.clients else 0) for i in range(args.clients)]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        for future in [pool.submit(client, share) for share in shares]:
            future.result()
    elapsed = time.perf_counter() - started
    cpu = _cpu_since(forwarder, cpu_before)
    print(
        f"  submit: {len(task_ids) / elapsed:,.0f} tasks/s accepted ({elapsed:.2f} s; "
        f"forwarder CPU {cpu:.2f} s = {cpu / len(task_ids) * 1e6:.1f} us/task)"
    )
    rss = forwarder.memory_info().rss
    print(f"  forwarder RSS with {len(task_ids):,} tasks waiting: {rss / 2**20:.0f} MiB")

    results = [
        pack(
            ResultBatch(
                results=[
                    Result(task_id=uuid.UUID(t), ok=True, value=b"r" * 64, worker_python="3.11.7")
                    for t in task_ids[i : i + RESULTS_PER_MESSAGE]
                ]
            )
        )
        for i in range(0, len(task_ids), RESULTS_PER_MESSAGE)
    ]
    store = Store.open(settings.store_url)
    with contextlib.closing(store), FakeEndpoint(registration) as endpoint:
        broker = registration["broker"]
        cpu_before = forwarder.cpu_times()
        started = time.perf_counter()
        futures = endpoint.transport.publish_many(
            OutgoingMessage(
                exchange=broker["results_exchange"],
                routing_key=broker["result_queue"],
                body=message,
                user_id=broker["username"],
            )
            for message in results
        )
        for future in futures:
            future.result(timeout=120)
        published = time.perf_counter() - started
        wait_until(
            lambda: store.tasks.count(status=TaskStatus.WAITING) == 0,
            timeout_s=600,
            interval_s=0.1,
            what="all results stored",
        )
        elapsed = time.perf_counter() - started
        cpu = _cpu_since(forwarder, cpu_before)
        stored = _store_bytes(store)
    print(
        f"  ingest: {len(task_ids) / elapsed:,.0f} results/s stored ({elapsed:.2f} s; "
        f"publishing took {published:.2f} s; "
        f"forwarder CPU {cpu:.2f} s = {cpu / len(task_ids) * 1e6:.1f} us/result)"
    )
    print(f"  forwarder RSS after: {forwarder.memory_info().rss / 2**20:.0f} MiB")
    print(
        f"  store size: {stored / 2**20:,.0f} MiB = {stored / len(task_ids):,.0f} bytes per finished task "
        f"({args.payload_bytes} B payload, 64 B result; indexes included)"
    )


def _store_bytes(store: Store) -> int:
    """The database's size on disk: SQLite's file and its write-ahead log, or PostgreSQL's
    `pg_database_size` (the whole throwaway database)."""
    from sqlalchemy import text

    url = store.engine.url
    if store.backend == "sqlite":
        database = Path(str(url.database))
        return sum(path.stat().st_size for path in (database, Path(f"{database}-wal")) if path.exists())
    with store.engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def _cpu_since(process: psutil.Process, before: psutil._common.pcputimes) -> float:  # type: ignore[name-defined]
    now = process.cpu_times()
    return (now.user - before.user) + (now.system - before.system)


if __name__ == "__main__":
    main()
