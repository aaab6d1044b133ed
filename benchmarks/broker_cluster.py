"""A private 3-node RabbitMQ cluster (`taskfabric broker up --nodes 3`): what it costs and how
long a node's crash interrupts the traffic.

Measures, on a cluster started in a temporary folder:

- the time to form the cluster (first start: node 1, then nodes 2 and 3 joining it);
- confirmed publishes per second and consumes per second on a quorum queue with 1 replica and
  with 3 (`x-quorum-initial-group-size`), through taskfabric's transport given every node's URL;
- the failover gap: a publisher (10-message batches, confirms awaited) and a consumer, both first
  connected to the node leading the queue, while that node is `kill -9`ed: the longest pause
  between two confirms, and between two deliveries, from 1 s before the kill until the restart;
  then the time to restart the node and see its replica online again. Every confirmed message
  is checked to arrive (lost ones are counted).

Prints readable lines and one JSON line. Figures are measured, never asserted.

    .venv/bin/python benchmarks/broker_cluster.py --messages 20000
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from taskfabric import __version__
from taskfabric.broker_config import ManagementClient, RabbitCluster
from taskfabric.errors import BrokerError
from taskfabric.testing import unique_name, wait_until
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

_BATCH = 500


def throughput(cluster: RabbitCluster, replicas: int, messages: int) -> dict[str, float]:
    """Confirmed publishes/s and consumes/s on a fresh quorum queue with `replicas` replicas."""
    info = cluster.info()
    assert info is not None
    publisher, consumer = RabbitTransport(info.amqp_urls), RabbitTransport(info.amqp_urls[1:] + info.amqp_urls[:1])
    publisher.start()
    consumer.start()
    queue = unique_name(f"bench-q{replicas}")
    try:
        publisher.declare_queue(queue, arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": replicas})
        started = time.perf_counter()
        for offset in range(0, messages, _BATCH):
            count = min(_BATCH, messages - offset)
            batch = [OutgoingMessage(exchange="", routing_key=queue, body=b"x" * 100) for _ in range(count)]
            for future in publisher.publish_many(batch):
                future.result(timeout=60)
        publish_s = time.perf_counter() - started
        got = threading.Semaphore(0)
        done = [0]

        def on_delivery(delivery: Delivery) -> None:
            consumer.ack(delivery)
            done[0] += 1
            if done[0] == messages:
                got.release()

        started = time.perf_counter()
        consumer.consume(queue, on_delivery, prefetch=200)
        if not got.acquire(timeout=300):
            raise TimeoutError(f"only {done[0]} of {messages} delivered")
        consume_s = time.perf_counter() - started
    finally:
        consumer.close()
        publisher.delete_queue(queue)
        publisher.close()
    return {"publish_per_s": messages / publish_s, "consume_per_s": messages / consume_s}


class _Traffic:
    """A publisher (10-message batches, confirms awaited, unconfirmed ones sent again) and a
    consumer on one queue, each time-stamping what it confirmed or received."""

    def __init__(self, urls: list[str], queue: str) -> None:
        self.queue = queue
        self.publisher = RabbitTransport(urls, confirm_timeout_s=5.0, backoff_max_s=1.0)
        self.consumer = RabbitTransport(urls, backoff_max_s=1.0)
        self.confirmed: list[tuple[float, bytes]] = []
        self.received: list[tuple[float, bytes]] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish_loop, daemon=True)

    def start(self) -> None:
        self.publisher.start()
        self.consumer.start()
        self.consumer.consume(self.queue, self._on_delivery, prefetch=100)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def close(self) -> None:
        self.publisher.close()
        self.consumer.close()

    def wait_past(self, moment: float) -> None:
        """Wait for a confirm and a delivery after `moment` (the kill)."""
        try:
            wait_until(lambda: self.confirmed[-1][0] > moment, timeout_s=60, what="a confirm after the kill")
        except TimeoutError:
            raise TimeoutError(
                f"no confirm within 60 s of the kill; publishes failed: {dict(self.failures)}; "
                f"{len(self.received)} received, the last {time.monotonic() - self.received[-1][0]:.1f} s ago"
            ) from None
        wait_until(lambda: self.received[-1][0] > moment, timeout_s=60, what="a delivery after the kill")

    def longest_pauses(self, start: float, end: float) -> tuple[float, float]:
        """The longest time without a confirm, and without a delivery, between `start` and `end`."""
        with self._lock:
            received = [at for at, _ in self.received]
        return _longest_gap([at for at, _ in self.confirmed], start, end), _longest_gap(received, start, end)

    def received_bodies(self) -> list[bytes]:
        with self._lock:
            return [body for _, body in self.received]

    def _on_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self.received.append((time.monotonic(), delivery.body))
        self.consumer.ack(delivery)

    def _publish_loop(self) -> None:
        number = 0
        while not self._stop.is_set():
            bodies = [b"f-%07d" % (number + i) for i in range(10)]
            number += 10
            while bodies and not self._stop.is_set():
                messages = [OutgoingMessage(exchange="", routing_key=self.queue, body=body) for body in bodies]
                left = []
                for body, future in zip(bodies, self.publisher.publish_many(messages), strict=True):
                    try:
                        future.result(timeout=30)
                        self.confirmed.append((time.monotonic(), body))
                    except BrokerError as exc:
                        self.failures[type(exc).__name__] += 1
                        left.append(body)
                bodies = left
                if left:
                    self._stop.wait(0.1)


def _longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [start, *(at for at in times if start < at < end), end]
    return max(later - earlier for earlier, later in itertools.pairwise(inside))


def failover(cluster: RabbitCluster) -> dict[str, Any]:
    """Kill the node leading a busy queue; how long confirms and deliveries stop, and the restart."""
    info = cluster.info()
    assert info is not None
    queue = unique_name("bench-failover")
    admin = RabbitTransport(info.amqp_urls)
    admin.start()
    admin.declare_queue(queue, arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 3})
    time.sleep(5)  # a quorum queue crashed right after its declaration may come back leaderless
    leader = cluster.leader_of(queue)
    assert leader is not None
    # both first connect to the leader's node: its death makes each fail over
    traffic = _Traffic([info.amqp_urls[i] for i in [leader, *(i for i in range(cluster.size) if i != leader)]], queue)
    traffic.start()
    try:
        wait_until(lambda: len(traffic.confirmed) >= 2000, timeout_s=60, what="traffic before the kill")
        killed_at = time.monotonic()
        cluster.kill(leader)
        traffic.wait_past(killed_at)
        time.sleep(3)
        restart_at = time.monotonic()
        confirm_pause, delivery_pause = traffic.longest_pauses(killed_at - 1.0, restart_at)
        cluster.start_member(leader)
        restart_s = time.monotonic() - restart_at

        def online() -> bool:
            with ManagementClient(info.management_urls, vhost=info.vhost) as management:
                return len(management.queue_states()[queue].get("online") or ()) == cluster.size

        wait_until(online, timeout_s=120, interval_s=0.2, what="the replica online again")
        rejoin_s = time.monotonic() - restart_at
        time.sleep(2)
    finally:
        traffic.stop()
    sent = {body for _, body in traffic.confirmed}
    wait_until(lambda: sent <= set(traffic.received_bodies()), timeout_s=60, what="every confirmed message")
    received = traffic.received_bodies()
    traffic.close()
    admin.delete_queue(queue)
    admin.close()
    return {
        "longest_confirm_pause_s": confirm_pause,
        "longest_delivery_pause_s": delivery_pause,
        "restart_s": restart_s,
        "restart_to_replica_online_s": rejoin_s,
        "confirmed": len(sent),
        "lost": len(sent - set(received)),
        "redelivered_duplicates": len(received) - len(set(received)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000, help="messages per throughput run")
    parser.add_argument("--dir", type=Path, default=None, help="the cluster's folder, kept (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-bench-cluster-") as folder:
        cluster = RabbitCluster(args.dir or Path(folder) / "cluster", size=3)
        started = time.perf_counter()
        cluster.start()
        form_s = time.perf_counter() - started
        try:
            print(f"cluster of 3 formed in {form_s:.1f} s")
            record: dict[str, Any] = {"benchmark": "broker_cluster", "form_s": form_s, "messages": args.messages}
            for replicas in (1, 3):
                figures = throughput(cluster, replicas, args.messages)
                print(
                    f"quorum queue, {replicas} replica(s): {figures['publish_per_s']:,.0f} confirmed publishes/s, "
                    f"{figures['consume_per_s']:,.0f} consumes/s ({args.messages} x 100 B)"
                )
                record[f"replicas_{replicas}"] = figures
            gap = failover(cluster)
            print(
                f"kill -9 of the leader: confirms paused {gap['longest_confirm_pause_s']:.2f} s, deliveries "
                f"{gap['longest_delivery_pause_s']:.2f} s at most; restart {gap['restart_s']:.1f} s, replica online "
                f"{gap['restart_to_replica_online_s']:.1f} s after the restart began; {gap['confirmed']} confirmed, "
                f"{gap['lost']} lost, {gap['redelivered_duplicates']} redelivered"
            )
            record["failover"] = gap
        finally:
            cluster.stop()
    record |= {"python": platform.python_version(), "taskfabric": __version__, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
