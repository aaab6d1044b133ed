"""Prometheus metrics of the forwarder, served at `/metrics` (see docs/operator.md).

`ForwarderMetrics` owns a private `CollectorRegistry` (no process-wide default registry) and the
instruments. The services call small hooks on it: `tasks_submitted` (TaskService), `tasks_finished`
(every finished task, whatever finished it), `results_ingested` (the ingest thread),
`store_error` (the store runner), `broker_error`. Figures that are states rather than events are
read at scrape time by `refresh`: unfinished tasks per endpoint (one grouped store query, cached
for `metrics_cache_s`), endpoints online and workers busy/idle (the agents' status reports, as the
ingest thread's `StatusBook` holds them, else as the store last recorded them), the broker link.

Cardinality is bounded: the only open-ended label is the endpoint id; error codes outside
`ErrorCode` are counted as `OTHER` (an endpoint cannot mint label values); HTTP requests are
labelled by route template (`/v1/tasks/{task_id}`), never by raw path. No task ids, no users.

Access (DESIGN): with `metrics_token` set, a scrape must send `Authorization: Bearer <token>`
(compared in constant time), else 401. Without it, /metrics answers only when the forwarder listens
on a loopback address; on any other address it answers 404 naming the setting: metrics are never
exposed unauthenticated to the network.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import hmac
import inspect
import ipaddress
import itertools
import logging
import operator
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskfabric.errors import AuthenticationError, ErrorCode, NotFoundError
from taskfabric.forwarder.records import EndpointRecord, EndpointState, StatusReport, TaskRecord, TaskStatus
from taskfabric.forwarder.views import endpoint_state

if TYPE_CHECKING:
    from taskfabric.forwarder.service import Forwarder

__all__ = [
    "LATENCY_BUCKETS_S",
    "METRICS_DISABLED",
    "BatchHistogram",
    "ForwarderMetrics",
    "HttpMetrics",
    "authorize_scrape",
    "count_broker_errors",
    "error_code_label",
    "is_loopback",
    "log_access",
    "metrics_router",
    "route_template",
]

log = logging.getLogger(__name__)

METRICS_DISABLED = "METRICS_DISABLED"
#: from a fast local task to hour-long batch jobs
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
_OTHER_CODE = "OTHER"
_KNOWN_CODES = frozenset(code.value for code in ErrorCode)
_UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: hop name -> (timestamp it starts at, timestamp it ends at), on `TaskRecord`
_HOPS: dict[str, tuple[str, str]] = {
    "queued": ("created_at", "received_at"),  # forwarder accepted -> agent received
    "dispatch": ("received_at", "started_at"),  # agent received -> worker started
    "run": ("started_at", "finished_at"),  # the function ran
    "return": ("finished_at", "completed_at"),  # worker finished -> result stored
}


class ForwarderMetrics:
    """The forwarder's instruments, in a registry of their own."""

    def __init__(self, *, cache_s: float = 5.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._cache_s = cache_s
        self._counts_read_at: float | None = None
        self._refresh_lock = asyncio.Lock()
        self._define_counters()
        self._define_histograms()
        self._define_gauges()

    def _define_counters(self) -> None:
        registry = self.registry
        self.submitted = Counter(
            "taskfabric_tasks_submitted", "Tasks accepted for an endpoint", ["endpoint"], registry=registry
        )
        self.completed = Counter(
            "taskfabric_tasks_completed", "Tasks that ended with a result", ["endpoint"], registry=registry
        )
        self.failed = Counter(
            "taskfabric_tasks_failed",
            "Tasks that ended in error, by error code",
            ["endpoint", "code"],
            registry=registry,
        )
        self.cancelled = Counter(
            "taskfabric_tasks_cancelled", "Tasks that ended cancelled", ["endpoint"], registry=registry
        )
        self.result_messages = Counter(
            "taskfabric_result_messages", "Result messages stored from the broker", ["endpoint"], registry=registry
        )
        self.results = Counter(
            "taskfabric_results", "Results carried by stored result messages", ["endpoint"], registry=registry
        )
        self.http_requests = Counter(
            "taskfabric_http_requests",
            "HTTP requests by route template and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.replica_notices = Counter(
            "taskfabric_replica_notices",
            "Finished-task notices between forwarder replicas (sent: by this replica; received: from its peers)",
            ["direction"],
            registry=registry,
        )
        self.store_errors = Counter("taskfabric_store_errors", "Store calls that failed", registry=registry)
        self.broker_errors = Counter(
            "taskfabric_broker_errors", "Broker operations that failed", ["operation"], registry=registry
        )

    def _define_histograms(self) -> None:
        # task latencies are observed on the ingest hot path, a batch at a time: see BatchHistogram
        self.latency = BatchHistogram(
            "taskfabric_task_latency_seconds", "From submission to the stored result", "endpoint", LATENCY_BUCKETS_S
        )
        self.hop_latency = BatchHistogram(
            "taskfabric_task_hop_seconds",
            "One hop of a task: queued (accepted -> agent received), dispatch (-> worker started), "
            "run (-> worker finished), return (-> result stored)",
            "hop",
            LATENCY_BUCKETS_S,
        )
        self.registry.register(self.latency)
        self.registry.register(self.hop_latency)
        self.http_latency = Histogram(
            "taskfabric_http_request_duration_seconds",
            "HTTP request handling time by route template",
            ["route", "method"],
            registry=self.registry,
        )

    def _define_gauges(self) -> None:
        registry = self.registry
        self.waiting = Gauge("taskfabric_tasks_waiting", "Tasks waiting, per endpoint", ["endpoint"], registry=registry)
        self.running = Gauge("taskfabric_tasks_running", "Tasks running, per endpoint", ["endpoint"], registry=registry)
        self.endpoint_online = Gauge(
            "taskfabric_endpoint_online",
            "1 while the endpoint reports online or draining",
            ["endpoint"],
            registry=registry,
        )
        self.endpoints_online = Gauge("taskfabric_endpoints_online", "Endpoints online", registry=registry)
        self.endpoints = Gauge("taskfabric_endpoints", "Endpoints registered", registry=registry)
        self.workers = Gauge(
            "taskfabric_workers",
            "Workers by state (busy, idle), per endpoint",
            ["endpoint", "state"],
            registry=registry,
        )
        self.broker_connected = Gauge(
            "taskfabric_broker_connected", "1 while the forwarder's broker connection is up", registry=registry
        )

    # --- event hooks (any thread) -------------------------------------------------------

    def tasks_submitted(self, endpoint_id: uuid.UUID, count: int) -> None:
        self.submitted.labels(str(endpoint_id)).inc(count)

    def tasks_finished(self, records: Iterable[TaskRecord]) -> None:
        """Count finished tasks and observe their latencies (grouped first: this runs for every
        result the ingest thread stores)."""
        # grouped by the endpoint id's int: hashing a UUID object runs Python code, an int does not
        outcomes: collections.Counter[tuple[int, TaskStatus, str | None]] = collections.Counter()
        latencies: dict[int, list[float]] = collections.defaultdict(list)
        timed: list[TaskRecord] = []
        for record in records:
            status = record.status
            code = error_code_label(record.error_code) if status is TaskStatus.FAILED else None
            outcomes[record.endpoint_id.int, status, code] += 1
            if record.completed_at is not None and status is not TaskStatus.CANCELLED:
                latencies[record.endpoint_id.int].append(record.completed_at - record.created_at)
                timed.append(record)
        for (endpoint_id, status, code), count in outcomes.items():
            self._count_outcome(str(uuid.UUID(int=endpoint_id)), status, code, count)
        for endpoint_id, values in latencies.items():
            self.latency.observe_many(str(uuid.UUID(int=endpoint_id)), values)
        for hop, values in _hop_durations(timed).items():
            self.hop_latency.observe_many(hop, values)

    def _count_outcome(self, endpoint: str, status: TaskStatus, code: str | None, count: int) -> None:
        if status is TaskStatus.SUCCESS:
            self.completed.labels(endpoint).inc(count)
        elif status is TaskStatus.FAILED:
            self.failed.labels(endpoint, code or _OTHER_CODE).inc(count)
        elif status is TaskStatus.CANCELLED:
            self.cancelled.labels(endpoint).inc(count)

    def results_ingested(self, endpoint_id: uuid.UUID, *, messages: int, results: int) -> None:
        endpoint = str(endpoint_id)
        self.result_messages.labels(endpoint).inc(messages)
        self.results.labels(endpoint).inc(results)

    def replica_notice(self, direction: str) -> None:
        """A fan-out notice `sent` to the other replicas or `received` from one (forwarder/replicas.py)."""
        self.replica_notices.labels(direction).inc()

    def store_error(self, _error: Exception | None = None) -> None:
        self.store_errors.inc()

    def broker_error(self, operation: str) -> None:
        self.broker_errors.labels(operation).inc()

    def http_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        method = method if method in _METHODS else _OTHER_CODE
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_latency.labels(route, method).observe(duration_s)

    # --- scrape-time figures ------------------------------------------------------------

    async def refresh(self, forwarder: Forwarder) -> None:
        """Bring the state gauges up to date (the store query at most every `cache_s`)."""
        async with self._refresh_lock:
            self.broker_connected.set(1 if forwarder.broker.transport.connected else 0)
            now = time.monotonic()
            if self._counts_read_at is not None and now - self._counts_read_at < self._cache_s:
                return
            counts = await forwarder.runner.read(forwarder.store.tasks.pending_counts)
            records = await forwarder.runner.read(forwarder.store.endpoints.list)
            self._counts_read_at = now
            self.set_task_counts(counts, endpoints=[record.endpoint_id for record in records])
            reports = {record.endpoint_id: forwarder.ingestor.statuses.latest(record.endpoint_id) for record in records}
            self.set_endpoints(
                records, reports, now=time.time(), offline_after_s=forwarder.settings.endpoint_offline_after_s
            )

    def set_task_counts(
        self, counts: Mapping[tuple[uuid.UUID, TaskStatus], int], *, endpoints: Iterable[uuid.UUID] = ()
    ) -> None:
        """Replace the unfinished-task gauges: `counts`, and 0 for the other `endpoints`."""
        self.waiting.clear()
        self.running.clear()
        for endpoint_id in endpoints:
            self.waiting.labels(str(endpoint_id)).set(0)
            self.running.labels(str(endpoint_id)).set(0)
        for (endpoint_id, status), count in counts.items():
            gauge = self.waiting if status is TaskStatus.WAITING else self.running
            gauge.labels(str(endpoint_id)).set(count)

    def set_endpoints(
        self,
        records: Iterable[EndpointRecord],
        reports: Mapping[uuid.UUID, StatusReport | None],
        *,
        now: float,
        offline_after_s: float,
    ) -> None:
        """Online state and workers per endpoint: this replica's latest report when it has one
        (fresher), else the one the store recorded."""
        self.endpoint_online.clear()
        self.workers.clear()
        online = total = 0
        for record in records:
            total += 1
            endpoint = str(record.endpoint_id)
            report = reports.get(record.endpoint_id) or record.status
            state = endpoint_state(_with_status(record, report), now=now, offline_after_s=offline_after_s)
            is_online = state is not EndpointState.OFFLINE
            online += is_online
            self.endpoint_online.labels(endpoint).set(1 if is_online else 0)
            busy = max(0, report.workers - report.idle_workers) if is_online else 0
            idle = max(0, report.idle_workers) if is_online else 0
            self.workers.labels(endpoint, "busy").set(busy)
            self.workers.labels(endpoint, "idle").set(idle)
        self.endpoints.set(total)
        self.endpoints_online.set(online)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _hop_durations(records: list[TaskRecord]) -> dict[str, list[float]]:
    """Each hop's durations (see `_HOPS`) over the records that have both of its times."""
    getters = {hop: (operator.attrgetter(start), operator.attrgetter(end)) for hop, (start, end) in _HOPS.items()}
    durations: dict[str, list[float]] = {}
    for hop, (began_at, ended_at) in getters.items():
        pairs = zip(map(began_at, records), map(ended_at, records), strict=True)
        durations[hop] = [ended - began for began, ended in pairs if began is not None and ended is not None]
    return durations


class BatchHistogram(Collector):
    """A histogram with one label, observed a batch of values at a time under one lock (the
    client library's `Histogram.observe` costs microseconds per value and per label lookup).
    Negative values count as 0: hops span hosts' clocks, and skew is not time travel."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._bounds = sorted(buckets)
        if self._bounds and self._bounds[0] < 0:
            raise ValueError("histogram bucket bounds must not be negative")
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # label value -> (counts, [sum])
        self._lock = threading.Lock()

    def observe_many(self, label_value: str, values: Sequence[float]) -> None:
        if not values:
            return
        ordered = sorted(values)  # then one bisect per bucket bound, not one per value
        positive = ordered[bisect.bisect_right(ordered, 0.0) :]
        # values <= each bound (negative ones too: as 0 they are below every bound, all >= 0)
        below = [bisect.bisect_right(ordered, bound) for bound in self._bounds]
        below.append(len(ordered))
        with self._lock:
            counts, total = self._series.setdefault(label_value, ([0] * (len(self._bounds) + 1), [0.0]))
            previous = 0
            for index, cumulative in enumerate(below):
                counts[index] += cumulative - previous
                previous = cumulative
            total[0] += sum(positive)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        with self._lock:
            series = {key: (list(counts), total[0]) for key, (counts, total) in self._series.items()}
        for label_value, (counts, total) in sorted(series.items()):
            cumulative = list(itertools.accumulate(counts))
            buckets = [(floatToGoString(bound), cumulative[i]) for i, bound in enumerate(self._bounds)]
            buckets.append(("+Inf", cumulative[-1]))
            family.add_metric([label_value], buckets, total)
        yield family


def _with_status(record: EndpointRecord, report: StatusReport) -> EndpointRecord:
    if report is record.status:
        return record
    return EndpointRecord(
        endpoint_id=record.endpoint_id,
        owner_id=record.owner_id,
        name=record.name,
        queue_secret=record.queue_secret,
        broker_username=record.broker_username,
        created_at=record.created_at,
        metadata=record.metadata,
        status=report,
    )


def error_code_label(code: str | None) -> str:
    """The error code as a label value: one of `ErrorCode`, else OTHER (bounded cardinality)."""
    return code if code in _KNOWN_CODES else _OTHER_CODE


# --- access -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def authorize_scrape(*, token: str | None, header: str | None, host: str) -> None:
    """Raise unless this scrape may read the metrics (see the module docstring)."""
    if token is None:
        if is_loopback(host):
            return
        raise NotFoundError(
            "/metrics is disabled: the forwarder listens on a non-loopback address and metrics_token is not set",
            code=METRICS_DISABLED,
        )
    scheme, _, offered = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), token.encode()):
        raise AuthenticationError("/metrics needs the metrics token (Authorization: Bearer <metrics_token>)")


def log_access(*, token: str | None, host: str) -> None:
    """Say once, at start, how /metrics may be read (an operator wonders when it answers 404)."""
    if token is not None:
        log.info("/metrics needs the metrics token")
    elif is_loopback(host):
        log.info("/metrics is open on the loopback address %s (set metrics_token to require a token)", host)
    else:
        log.warning("/metrics is disabled: listening on %s without metrics_token", host)


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False, response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format); needs the metrics token when one is set."""
    forwarder: Forwarder = request.app.state.forwarder
    settings = forwarder.settings
    authorize_scrape(token=settings.metrics_token, header=request.headers.get("authorization"), host=settings.host)
    try:
        await forwarder.metrics.refresh(forwarder)
    except Exception as exc:  # a failing store must not hide the counters that say so
        log.warning("metrics: the scrape-time figures could not be read: %s", exc)
    return Response(forwarder.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# --- HTTP middleware ----------------------------------------------------------------------


class HttpMetrics:
    """ASGI middleware: count HTTP requests by route template, method and status."""

    def __init__(self, app: ASGIApp, *, metrics: ForwarderMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self._metrics.http_request(
                route_template(scope), scope.get("method", ""), status, time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The matched route's path template, or `unmatched` (never the raw path)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else _UNMATCHED_ROUTE


def count_broker_errors(
    handler: Callable[[Request, Any], Response | Awaitable[Response]], metrics: ForwarderMetrics
) -> Callable[[Request, Any], Awaitable[Response]]:
    """Wrap the HTTP handler of `BrokerError` so that each one is counted (operation `request`)."""

    async def counted(request: Request, exc: Any) -> Response:
        metrics.broker_error("request")
        answer = handler(request, exc)
        return await answer if inspect.isawaitable(answer) else answer

    return counted
