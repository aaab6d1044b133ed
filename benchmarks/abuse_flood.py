"""Fair ingest under a flood: does one endpoint's stream of results delay another user's results?

A real forwarder (subprocess), a real broker and SQLite (or PostgreSQL). User A's endpoint floods:
a raw producer with A's endpoint credentials publishes `ResultBatch` messages of
`--results-per-message` results for A's submitted tasks, as fast as the broker confirms them, then
keeps re-sending them (duplicates cost the ingest a lookup each) until the measurement ends. User
B does sequential round trips: submit one task over HTTP, B's stand-in agent (its own credentials)
answers it at once on the broker, and B polls the task until it is finished. B's round trips are
timed first with A idle, then while A floods; the script prints p50/p99 of both and their ratio.

Usage::

    .venv/bin/python benchmarks/abuse_flood.py                      # private broker, SQLite
    .venv/bin/python benchmarks/abuse_flood.py --flood-tasks 200000 --round-trips 200
    .venv/bin/python benchmarks/abuse_flood.py --postgres          # a throwaway PostgreSQL database

A private RabbitMQ node is started in a temporary directory unless TASKFABRIC_TEST_AMQP_URL and
TASKFABRIC_TEST_MANAGEMENT_URL name one. `run_flood(...)` is the same measurement as a function
(`benchmarks/abuse.py` calls it); it returns a `FloodFigures`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderApi, ForwarderProcess
from taskfabric.protocol import EndpointRegistered, Result, ResultBatch, TaskBatch, pack, parse, unpack
from taskfabric.testing import broker_for_tests, unique_name
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

__all__ = ["FloodFigures", "main", "run_flood"]

_SUBMIT_BATCH = 10_000
_PUBLISH_WINDOW = 16
_POLL_S = 0.002


@dataclasses.dataclass(frozen=True, kw_only=True)
class FloodFigures:
    """B's round-trip times (seconds) with A idle and during A's flood, and the flood's size."""

    idle_p50_s: float
    idle_p99_s: float
    flood_p50_s: float
    flood_p99_s: float
    #: the submit alone (HTTP request to answer): the part of the round trip that waits on the store writer
    idle_submit_p50_s: float
    flood_submit_p50_s: float
    flood_results_sent: int
    flood_seconds: float
    backend: str

    @property
    def p50_ratio(self) -> float:
        return self.flood_p50_s / self.idle_p50_s

    @property
    def p99_ratio(self) -> float:
        return self.flood_p99_s / self.idle_p99_s

    def lines(self) -> list[str]:
        rate = self.flood_results_sent / self.flood_seconds if self.flood_seconds else 0.0
        return [
            f"store: {self.backend}",
            f"B idle round trip:   p50 {self.idle_p50_s * 1000:8.1f} ms   p99 {self.idle_p99_s * 1000:8.1f} ms",
            f"B during A's flood:  p50 {self.flood_p50_s * 1000:8.1f} ms   p99 {self.flood_p99_s * 1000:8.1f} ms",
            f"ratio flood/idle:    p50 {self.p50_ratio:8.2f} x    p99 {self.p99_ratio:8.2f} x",
            f"B's submit alone:    p50 {self.idle_submit_p50_s * 1000:8.1f} ms idle, "
            f"{self.flood_submit_p50_s * 1000:.1f} ms during the flood",
            f"A's flood: {self.flood_results_sent} results published in {self.flood_seconds:.1f} s ({rate:,.0f}/s)",
        ]


def run_flood(
    *,
    amqp_url: str | None = None,
    management_url: str | None = None,
    database_url: str | None = None,
    flood_tasks: int = 50_000,
    results_per_message: int = 256,
    round_trips: int = 100,
    result_bytes: int = 64,
    settings: dict[str, Any] | None = None,
) -> FloodFigures:
    """Measure B's round trips idle and during A's flood (see the module docstring). Without
    `amqp_url`/`management_url`, a private broker is started; `settings` overrides forwarder keys."""
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tf-flood-")))
        if amqp_url is None or management_url is None:
            broker = stack.enter_context(broker_for_tests(folder / "broker"))
            amqp_url, management_url = broker.amqp_url, broker.management_url
        assert management_url is not None
        values: dict[str, Any] = {
            "database_url": database_url or f"sqlite:///{folder / 'forwarder.db'}",
            "amqp_url": amqp_url,
            "management_url": management_url,
            "topology_prefix": unique_name("flood"),
            # B's sequential round trips may pass the default 50 submits/s: the rate is not what is measured
            "quotas": {"submit_requests_per_s": 0},
            **(settings or {}),
        }
        process = stack.enter_context(ForwarderProcess(folder / "forwarder", values))
        forwarder_settings = ForwarderSettings.from_mapping(values)
        alice = stack.enter_context(_user(process, forwarder_settings, "alice"))
        bob = stack.enter_context(_user(process, forwarder_settings, "bob"))
        flooder = stack.enter_context(_Flooder.for_user(alice, flood_tasks, results_per_message, result_bytes))
        bob_endpoint, bob_function = _bob_with_agent(stack, bob)
        for _ in range(10):  # warm-up
            _round_trip(bob, bob_endpoint, bob_function)
        idle, idle_submit = _round_trips(bob, bob_endpoint, bob_function, round_trips)
        flooder.start()
        try:
            flooder.wait_flowing()
            during, during_submit = _round_trips(bob, bob_endpoint, bob_function, round_trips)
        finally:
            flooder.stop()
        return FloodFigures(
            idle_p50_s=_percentile(idle, 50),
            idle_p99_s=_percentile(idle, 99),
            flood_p50_s=_percentile(during, 50),
            flood_p99_s=_percentile(during, 99),
            idle_submit_p50_s=_percentile(idle_submit, 50),
            flood_submit_p50_s=_percentile(during_submit, 50),
            flood_results_sent=flooder.sent,
            flood_seconds=flooder.seconds,
            backend=forwarder_settings.store_url.split(":", 1)[0],
        )


# --- the parts ----------------------------------------------------------------------------


@contextlib.contextmanager
def _user(process: ForwarderProcess, settings: ForwarderSettings, stem: str) -> Iterator[ForwarderApi]:
    name = unique_name(stem)
    create_user(settings, name)
    with ForwarderApi(process.url, create_token(settings, name), username=name) as api:
        yield api


def _submit(api: ForwarderApi, endpoint_id: str, function_id: str, count: int) -> list[str]:
    tasks = [{"function_id": function_id, "payload": b"x"} for _ in range(count)]
    response = api.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        content=msgpack.packb({"tasks": tasks, "client_python": "3.11.7"}),
        headers={"Content-Type": "application/msgpack"},
    )
    response.raise_for_status()
    return list(msgpack.unpackb(response.content)["task_ids"])


class _Flooder:
    """A's endpoint credentials publishing result messages for A's tasks, round and round."""

    def __init__(self, registration: EndpointRegistered, bodies: list[bytes], results_per_message: int) -> None:
        self._access = registration.broker
        self._bodies = bodies
        self._results_per_message = results_per_message
        self._transport = RabbitTransport(self._access.amqp_url, connection_name="flood")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._flowing = threading.Event()
        self.sent = 0
        self.seconds = 0.0

    @classmethod
    @contextlib.contextmanager
    def for_user(cls, api: ForwarderApi, tasks: int, results_per_message: int, result_bytes: int) -> Iterator[_Flooder]:
        registration = parse(EndpointRegistered, api.register_endpoint("flood"))
        function_id = api.register_function(b"flood" + uuid.uuid4().bytes)
        task_ids: list[str] = []
        while len(task_ids) < tasks:
            batch = min(_SUBMIT_BATCH, tasks - len(task_ids))
            task_ids += _submit(api, str(registration.endpoint_id), function_id, batch)
        value = b"r" * result_bytes
        bodies = [
            pack(
                ResultBatch(
                    results=[
                        Result(task_id=uuid.UUID(task_id), ok=True, value=value)
                        for task_id in task_ids[start : start + results_per_message]
                    ]
                )
            )
            for start in range(0, len(task_ids), results_per_message)
        ]
        flooder = cls(registration, bodies, results_per_message)
        flooder._transport.start()
        try:
            yield flooder
        finally:
            flooder.stop()
            flooder._transport.close()

    def start(self) -> None:
        self._thread.start()

    def wait_flowing(self) -> None:
        self._flowing.wait(30)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        started = time.monotonic()
        index = 0
        while not self._stop.is_set():
            window = [self._bodies[(index + offset) % len(self._bodies)] for offset in range(_PUBLISH_WINDOW)]
            index += _PUBLISH_WINDOW
            futures = self._transport.publish_many(
                OutgoingMessage(
                    exchange=self._access.results_exchange,
                    routing_key=self._access.result_queue,
                    body=body,
                    user_id=self._access.username,
                )
                for body in window
            )
            for future in futures:
                future.result(timeout=60)
            self.sent += len(window) * self._results_per_message
            self._flowing.set()
        self.seconds = time.monotonic() - started


class _Responder:
    """B's stand-in agent: answers every task at once (its own broker credentials)."""

    def __init__(self, registration: EndpointRegistered) -> None:
        self._access = registration.broker
        self._transport = RabbitTransport(self._access.amqp_url, connection_name="responder")

    def start(self) -> None:
        self._transport.start()
        self._transport.consume(self._access.task_queue, self._on_task, prefetch=10)

    def close(self) -> None:
        self._transport.close()

    def _on_task(self, delivery: Delivery) -> None:  # on the IO thread: never wait here
        batch = unpack(delivery.body)
        assert isinstance(batch, TaskBatch)
        results = [Result(task_id=task.task_id, ok=True, value=b"b") for task in batch.tasks]
        self._transport.publish(
            OutgoingMessage(
                exchange=self._access.results_exchange,
                routing_key=self._access.result_queue,
                body=pack(ResultBatch(results=results)),
                user_id=self._access.username,
            )
        )
        self._transport.ack(delivery)


def _bob_with_agent(stack: contextlib.ExitStack, bob: ForwarderApi) -> tuple[str, str]:
    registration = parse(EndpointRegistered, bob.register_endpoint("quiet"))
    responder = _Responder(registration)
    responder.start()
    stack.callback(responder.close)
    return str(registration.endpoint_id), bob.register_function(b"quiet" + uuid.uuid4().bytes)


def _round_trips(api: ForwarderApi, endpoint_id: str, function_id: str, count: int) -> tuple[list[float], list[float]]:
    """(round trips, their submits) in seconds, `count` one after the other."""
    timed = [_round_trip(api, endpoint_id, function_id) for _ in range(count)]
    return [total for total, _ in timed], [submit for _, submit in timed]


def _round_trip(api: ForwarderApi, endpoint_id: str, function_id: str) -> tuple[float, float]:
    """Seconds from submitting one task to reading it finished, and of the submit alone."""
    started = time.perf_counter()
    [task_id] = _submit(api, endpoint_id, function_id, 1)
    submitted = time.perf_counter() - started
    deadline = time.monotonic() + 120
    while api.task(task_id)["status"] in ("waiting", "running"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not finish in 120 s")
        time.sleep(_POLL_S)
    return time.perf_counter() - started, submitted


def _percentile(values: list[float], percent: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood-tasks", type=int, default=50_000, help="A's tasks whose results flood (50,000)")
    parser.add_argument("--results-per-message", type=int, default=256, help="results per flood message (256)")
    parser.add_argument("--round-trips", type=int, default=100, help="B's round trips per phase (100)")
    parser.add_argument("--result-bytes", type=int, default=64, help="bytes per flooded result value (64)")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL database (as the tests get)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        database_url = args.database_url
        if args.postgres:
            from taskfabric.forwarder.testing.postgres import postgres_for_tests

            database_url = stack.enter_context(postgres_for_tests())
        figures = run_flood(
            amqp_url=os.environ.get("TASKFABRIC_TEST_AMQP_URL"),
            management_url=os.environ.get("TASKFABRIC_TEST_MANAGEMENT_URL"),
            database_url=database_url,
            flood_tasks=args.flood_tasks,
            results_per_message=args.results_per_message,
            round_trips=args.round_trips,
            result_bytes=args.result_bytes,
        )
    for line in figures.lines():
        print(line)


if __name__ == "__main__":
    main()
