"""How fast a "these tasks finished" notice reaches another forwarder replica: RabbitMQ fanout vs
PostgreSQL LISTEN/NOTIFY (the two candidates of issue 18; forwarder/replicas.py says which won and why).

For each, `--notices` notices are sent one after the other, each carrying `--ids` task ids
(16 bytes each; NOTIFY carries them hex-encoded: its payload is text of at most 8,000 bytes, so
at most ~240 ids per notice), and the time from send to receipt is measured on one clock:

- broker: `ReplicaFanout.announce` on one RabbitTransport, received by another replica's
  `ReplicaFanout` (a fanout exchange, one classic queue per replica), as the forwarder runs it;
- postgres: `NOTIFY` inside a transaction that also inserts a row (as an ingest commit would),
  received by a second connection blocked in `LISTEN` (psycopg's `notifies()`).

Usage::

    .venv/bin/python benchmarks/replica_fanout.py --notices 500 --ids 200
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import psycopg

from taskfabric.broker_config import Topology
from taskfabric.forwarder.replicas import ReplicaFanout
from taskfabric.forwarder.testing import postgres_for_tests
from taskfabric.testing import broker_for_tests, unique_name
from taskfabric.transport import RabbitTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notices", type=int, default=500, help="notices per mechanism (default 500)")
    parser.add_argument("--ids", type=int, default=200, help="task ids per notice (default 200, NOTIFY's limit ~240)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-fanout-") as name:
        folder = Path(name)
        with broker_for_tests(folder / "broker") as broker:
            broker_ms = through_broker(broker.amqp_url, args)
        with postgres_for_tests(folder / "postgres") as database_url:
            postgres_ms = through_postgres(database_url, args)
    print(f"{args.notices} notices of {args.ids} task ids each, send -> receipt on another connection")
    for label, samples in (("RabbitMQ fanout exchange", broker_ms), ("PostgreSQL LISTEN/NOTIFY", postgres_ms)):
        samples.sort()
        p99 = samples[int(0.99 * (len(samples) - 1))]
        print(f"  {label:<26} median {statistics.median(samples):6.2f} ms   p99 {p99:6.2f} ms")
    print(f"  load average after: {os.getloadavg()[0]:.2f}")


def through_broker(amqp_url: str, args: argparse.Namespace) -> list[float]:
    topology = Topology(prefix=unique_name("bench-fanout"))
    received: queue.SimpleQueue[float] = queue.SimpleQueue()
    sender_transport, receiver_transport = RabbitTransport(amqp_url), RabbitTransport(amqp_url)
    sender_transport.start(wait_s=10)
    receiver_transport.start(wait_s=10)
    sender = ReplicaFanout(sender_transport, topology, on_notice=lambda ids: None)
    receiver = ReplicaFanout(receiver_transport, topology, on_notice=lambda ids: received.put(time.perf_counter()))
    try:
        sender.start()
        receiver.start()
        samples = []
        for _ in range(args.notices):
            ids = [uuid.uuid4() for _ in range(args.ids)]
            started = time.perf_counter()
            sender.announce(ids)
            samples.append((received.get(timeout=10) - started) * 1000)
        return samples
    finally:
        sender.close()
        receiver.close()
        topology.delete_shared(sender_transport)
        sender_transport.close()
        receiver_transport.close()


def through_postgres(database_url: str, args: argparse.Namespace) -> list[float]:
    parts = urllib.parse.urlsplit(database_url)
    dsn = urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn) as writer,
    ):
        writer.execute("CREATE TABLE IF NOT EXISTS bench_finished (id bigserial PRIMARY KEY, n int)")
        writer.commit()
        listener.execute("LISTEN tasks_finished")
        samples = []
        for _ in range(args.notices):
            payload = ",".join(uuid.uuid4().hex for _ in range(args.ids))
            started = time.perf_counter()
            writer.execute("INSERT INTO bench_finished (n) VALUES (1)")
            writer.execute("SELECT pg_notify('tasks_finished', %s)", (payload,))
            writer.commit()
            for _notice in listener.notifies(timeout=10, stop_after=1):
                samples.append((time.perf_counter() - started) * 1000)
        return samples


if __name__ == "__main__":
    main()
