"""One RabbitMQ hop through taskfabric's transport: publish to delivery, and to the confirm.

A task crosses two such hops (its endpoint's task queue, then the result queue), so this is the
floor of the fabric's latency. Compares the topology's two queue types (`queue_type`), a quorum
queue and a classic one, on a private node (or the broker that TASKFABRIC_TEST_AMQP_URL names). Prints one
readable line and one JSON line per queue type. Figures are measured, never asserted.
`--rate N` also pushes N messages through one quorum queue, 1,000 confirms in flight, while a
consumer acks them: the broker's message rate (docs/scaling.md).

    .venv/bin/python benchmarks/broker_hop.py --messages 1000
    .venv/bin/python benchmarks/broker_hop.py --messages 200 --rate 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time

from taskfabric import __version__
from taskfabric.testing import broker_for_tests, unique_name
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport


def one_queue_type(publisher: RabbitTransport, consumer: RabbitTransport, kind: str, messages: int) -> dict[str, float]:
    queue = unique_name(f"hop-{kind}")
    publisher.declare_queue(queue, arguments={"x-queue-type": kind})
    delivered = threading.Event()

    def on_delivery(delivery: Delivery) -> None:
        consumer.ack(delivery)
        delivered.set()

    consumer.consume(queue, on_delivery, prefetch=10)
    to_delivery: list[float] = []
    to_confirm: list[float] = []
    try:
        for _ in range(messages):
            delivered.clear()
            started = time.perf_counter()
            confirm = publisher.publish(OutgoingMessage(exchange="", routing_key=queue, body=b"x" * 100))
            if not delivered.wait(10):
                raise TimeoutError(f"no delivery from {queue} within 10 s")
            to_delivery.append((time.perf_counter() - started) * 1000)
            confirm.result(10)
            to_confirm.append((time.perf_counter() - started) * 1000)
    finally:
        publisher.delete_queue(queue)
    return {
        "delivery_p50_ms": statistics.median(to_delivery),
        "delivery_p99_ms": sorted(to_delivery)[int(len(to_delivery) * 0.99) - 1],
        "confirm_p50_ms": statistics.median(to_confirm),
    }


def throughput(publisher: RabbitTransport, consumer: RabbitTransport, messages: int, size: int) -> dict[str, float]:
    """Confirmed publishes per second into one quorum queue (windows of 1,000 in flight) while a
    consumer takes and acks them: the broker's message rate for one queue."""
    queue = unique_name("rate-quorum")
    publisher.declare_queue(queue, arguments={"x-queue-type": "quorum"})
    received = 0
    done = threading.Event()

    def on_delivery(delivery: Delivery) -> None:
        nonlocal received
        consumer.ack(delivery)
        received += 1
        if received >= messages:
            done.set()

    consumer.consume(queue, on_delivery, prefetch=500)
    body = b"x" * size
    try:
        started = time.perf_counter()
        for start in range(0, messages, 1000):
            count = min(1000, messages - start)
            futures = publisher.publish_many(
                OutgoingMessage(exchange="", routing_key=queue, body=body) for _ in range(count)
            )
            for future in futures:
                future.result(30)
        confirmed = time.perf_counter()
        if not done.wait(120):
            raise TimeoutError(f"{received} of {messages} delivered")
        consumed = time.perf_counter()
    finally:
        publisher.delete_queue(queue)
    return {
        "confirmed_publishes_per_s": messages / (confirmed - started),
        "consumed_per_s": messages / (consumed - started),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--rate", type=int, default=0, metavar="N", help="also: N messages through one quorum queue, pipelined"
    )
    parser.add_argument("--size", type=int, default=1024, help="bytes per message of --rate")
    args = parser.parse_args()
    with broker_for_tests() as broker:
        publisher, consumer = RabbitTransport(broker.amqp_url), RabbitTransport(broker.amqp_url)
        publisher.start()
        consumer.start()
        try:
            for kind in ("quorum", "classic"):
                figures = one_queue_type(publisher, consumer, kind, args.messages)
                print(
                    f"{kind:8} queue: publish -> delivery p50 {figures['delivery_p50_ms']:.2f} ms, "
                    f"p99 {figures['delivery_p99_ms']:.2f} ms; "
                    f"publish -> confirm p50 {figures['confirm_p50_ms']:.2f} ms"
                )
                record = {"benchmark": "broker_hop", "queue_type": kind, "messages": args.messages, **figures}
                record |= {"python": platform.python_version(), "taskfabric": __version__}
                print(json.dumps(record | {"date": time.strftime("%Y-%m-%d")}))
            if args.rate:
                rate = throughput(publisher, consumer, args.rate, args.size)
                print(
                    f"quorum queue, {args.rate} messages of {args.size} bytes: "
                    f"{rate['confirmed_publishes_per_s']:,.0f} confirmed publishes/s, "
                    f"{rate['consumed_per_s']:,.0f} consumed/s (load {os.getloadavg()[0]:.1f})"
                )
                record = {"benchmark": "broker_rate", "messages": args.rate, "bytes": args.size, **rate}
                print(json.dumps(record | {"date": time.strftime("%Y-%m-%d")}))
        finally:
            publisher.close()
            consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
