"""The forwarder's metrics as domain logic: what each hook counts, the bounded labels, who may
scrape, the HTTP middleware's route templates, the store runner's error hook, the settings,
the monitoring files, and readiness (which part is named when it fails)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskfabric.errors import AuthenticationError, ConfigError, ErrorCode, NotFoundError, StoreError
from taskfabric.forwarder.health import check_readiness
from taskfabric.forwarder.metrics import (
    METRICS_DISABLED,
    BatchHistogram,
    ForwarderMetrics,
    HttpMetrics,
    authorize_scrape,
    error_code_label,
    is_loopback,
)
from taskfabric.forwarder.records import EndpointRecord, StatusReport, TaskRecord, TaskStatus
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import StoreConflict, StoreRunner
from taskfabric.transport import MemoryBroker, MemoryTransport

TOKEN = "a-metrics-token-of-32-characters"


def _value(metrics: ForwarderMetrics, name: str, **labels: str) -> float | None:
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _record(status: TaskStatus, endpoint_id: uuid.UUID, *, code: str | None = None, **times: float) -> TaskRecord:
    return TaskRecord(
        task_id=uuid.uuid4(),
        owner_id=uuid.uuid4(),
        endpoint_id=endpoint_id,
        function_id=uuid.uuid4(),
        status=status,
        created_at=times.pop("created_at", 100.0),
        error_code=code,
        **times,
    )


def test_finished_tasks_are_counted_by_outcome_and_error_code() -> None:
    metrics = ForwarderMetrics()
    endpoint = uuid.uuid4()
    done = {"completed_at": 101.0}
    records = [
        *[_record(TaskStatus.SUCCESS, endpoint, **done) for _ in range(3)],
        *[_record(TaskStatus.FAILED, endpoint, code=ErrorCode.TASK_FAILED.value, **done) for _ in range(2)],
        _record(TaskStatus.FAILED, endpoint, code=ErrorCode.WORKER_LOST.value, **done),
        _record(TaskStatus.FAILED, endpoint, code="MADE_UP_BY_AN_ENDPOINT", **done),
        _record(TaskStatus.CANCELLED, endpoint, **done),
    ]
    metrics.tasks_finished(records)
    metrics.tasks_submitted(endpoint, 8)
    ep = str(endpoint)
    assert _value(metrics, "taskfabric_tasks_submitted_total", endpoint=ep) == 8
    assert _value(metrics, "taskfabric_tasks_completed_total", endpoint=ep) == 3
    assert _value(metrics, "taskfabric_tasks_failed_total", endpoint=ep, code="TASK_FAILED") == 2
    assert _value(metrics, "taskfabric_tasks_failed_total", endpoint=ep, code="WORKER_LOST") == 1
    # an endpoint cannot mint label values: unknown codes are counted as OTHER
    assert _value(metrics, "taskfabric_tasks_failed_total", endpoint=ep, code="OTHER") == 1
    assert _value(metrics, "taskfabric_tasks_failed_total", endpoint=ep, code="MADE_UP_BY_AN_ENDPOINT") is None
    assert _value(metrics, "taskfabric_tasks_cancelled_total", endpoint=ep) == 1
    # latency: every finished task but the cancelled one
    assert _value(metrics, "taskfabric_task_latency_seconds_count", endpoint=ep) == 7
    assert _value(metrics, "taskfabric_task_latency_seconds_sum", endpoint=ep) == pytest.approx(7.0)


def test_hops_come_from_the_timestamps_results_carry() -> None:
    metrics = ForwarderMetrics()
    endpoint = uuid.uuid4()
    record = _record(
        TaskStatus.SUCCESS,
        endpoint,
        created_at=100.0,
        received_at=100.5,
        started_at=101.0,
        finished_at=104.0,
        completed_at=104.25,
    )
    skewed = _record(TaskStatus.SUCCESS, endpoint, created_at=100.0, received_at=99.0, completed_at=101.0)
    metrics.tasks_finished([record, skewed])
    sums = {hop: _value(metrics, "taskfabric_task_hop_seconds_sum", hop=hop) for hop in ("queued", "dispatch")}
    assert sums == {"queued": pytest.approx(0.5), "dispatch": pytest.approx(0.5)}  # the skewed -1 s counts as 0
    assert _value(metrics, "taskfabric_task_hop_seconds_count", hop="queued") == 2
    assert _value(metrics, "taskfabric_task_hop_seconds_sum", hop="run") == pytest.approx(3.0)
    assert _value(metrics, "taskfabric_task_hop_seconds_count", hop="run") == 1  # the skewed one never started
    assert _value(metrics, "taskfabric_task_hop_seconds_sum", hop="return") == pytest.approx(0.25)


def test_results_ingested_counts_messages_and_results() -> None:
    metrics = ForwarderMetrics()
    endpoint = uuid.uuid4()
    metrics.results_ingested(endpoint, messages=1, results=40)
    metrics.results_ingested(endpoint, messages=1, results=2)
    assert _value(metrics, "taskfabric_result_messages_total", endpoint=str(endpoint)) == 2
    assert _value(metrics, "taskfabric_results_total", endpoint=str(endpoint)) == 42


def _endpoint(endpoint_id: uuid.UUID, status: StatusReport) -> EndpointRecord:
    return EndpointRecord(
        endpoint_id=endpoint_id,
        owner_id=uuid.uuid4(),
        name="ep",
        queue_secret="s",
        broker_username="u",
        created_at=0.0,
        status=status,
    )


def test_endpoint_gauges_prefer_the_fresh_report_and_forget_gone_endpoints() -> None:
    metrics = ForwarderMetrics()
    now = time.time()
    fresh, stale, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old = StatusReport(state="online", last_heartbeat_at=now - 100, workers=4, idle_workers=4)
    report = StatusReport(state="online", last_heartbeat_at=now, workers=4, idle_workers=1)
    metrics.set_endpoints([_endpoint(gone, report)], {}, now=now, offline_after_s=30)
    metrics.set_endpoints(
        [_endpoint(fresh, old), _endpoint(stale, old)], {fresh: report, stale: None}, now=now, offline_after_s=30
    )
    assert _value(metrics, "taskfabric_endpoint_online", endpoint=str(fresh)) == 1
    assert _value(metrics, "taskfabric_endpoint_online", endpoint=str(stale)) == 0
    assert _value(metrics, "taskfabric_endpoint_online", endpoint=str(gone)) is None
    assert _value(metrics, "taskfabric_workers", endpoint=str(fresh), state="busy") == 3
    assert _value(metrics, "taskfabric_workers", endpoint=str(fresh), state="idle") == 1
    assert _value(metrics, "taskfabric_workers", endpoint=str(stale), state="idle") == 0
    assert (_value(metrics, "taskfabric_endpoints_online"), _value(metrics, "taskfabric_endpoints")) == (1, 2)


def test_task_counts_replace_the_previous_ones() -> None:
    metrics = ForwarderMetrics()
    first, second = uuid.uuid4(), uuid.uuid4()
    metrics.set_task_counts({(first, TaskStatus.WAITING): 5, (first, TaskStatus.RUNNING): 2})
    metrics.set_task_counts({(second, TaskStatus.WAITING): 1})
    assert _value(metrics, "taskfabric_tasks_waiting", endpoint=str(first)) is None
    assert _value(metrics, "taskfabric_tasks_running", endpoint=str(first)) is None
    assert _value(metrics, "taskfabric_tasks_waiting", endpoint=str(second)) == 1
    # registered endpoints without unfinished tasks show 0 (not a missing series)
    metrics.set_task_counts({(second, TaskStatus.RUNNING): 4}, endpoints=[first, second])
    assert _value(metrics, "taskfabric_tasks_waiting", endpoint=str(first)) == 0
    assert _value(metrics, "taskfabric_tasks_waiting", endpoint=str(second)) == 0
    assert _value(metrics, "taskfabric_tasks_running", endpoint=str(second)) == 4


def test_error_code_labels_are_bounded() -> None:
    assert error_code_label("TASK_FAILED") == "TASK_FAILED"
    assert error_code_label("x" * 64) == "OTHER"
    assert error_code_label(None) == "OTHER"


# --- access -------------------------------------------------------------------------------


def test_a_scrape_needs_the_token_when_one_is_set() -> None:
    for header in (None, "", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        with pytest.raises(AuthenticationError):
            authorize_scrape(token=TOKEN, header=header, host="127.0.0.1")
    authorize_scrape(token=TOKEN, header=f"Bearer {TOKEN}", host="0.0.0.0")
    authorize_scrape(token=TOKEN, header=f"bearer  {TOKEN}", host="10.1.2.3")


def test_without_a_token_metrics_stay_on_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        authorize_scrape(token=None, header=None, host=host)
    for host in ("0.0.0.0", "::", "10.1.2.3", "forwarder.example.org"):
        with pytest.raises(NotFoundError) as refused:
            authorize_scrape(token=None, header=None, host=host)
        assert refused.value.code == METRICS_DISABLED
        assert "metrics_token" in str(refused.value)
    assert not is_loopback("0.0.0.0")


def test_the_metrics_token_is_validated(tmp_home: Path) -> None:
    with pytest.raises(ConfigError, match="metrics_token"):
        ForwarderSettings(metrics_token="short")
    assert ForwarderSettings(metrics_token=TOKEN).metrics_token == TOKEN
    environ = {"TASKFABRIC_FORWARDER_METRICS_TOKEN": TOKEN}
    assert ForwarderSettings.load(environ=environ).metrics_token == TOKEN


# --- HTTP middleware ----------------------------------------------------------------------


def test_http_requests_are_labelled_by_route_template() -> None:
    metrics = ForwarderMetrics()
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> dict[str, str]:
        return {"task_id": task_id}

    app.include_router(router)
    app.add_middleware(HttpMetrics, metrics=metrics)
    task_ids = [str(uuid.uuid4()) for _ in range(3)]

    async def requests() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://forwarder") as client:
            answers = [await client.get(f"/v1/tasks/{task_id}") for task_id in task_ids]
            answers.append(await client.get(f"/nowhere/{task_ids[0]}"))
            answers.append(await client.request("BREW", "/v1/tasks/x"))
        return [answer.status_code for answer in answers]

    assert asyncio.run(requests()) == [200, 200, 200, 404, 405]
    assert (
        _value(metrics, "taskfabric_http_requests_total", route="/v1/tasks/{task_id}", method="GET", status="200") == 3
    )
    assert _value(metrics, "taskfabric_http_requests_total", route="unmatched", method="GET", status="404") == 1
    text = metrics.exposition().decode()
    assert not any(task_id in text for task_id in task_ids)
    assert "BREW" not in text  # methods are bounded too


# --- store errors -------------------------------------------------------------------------


def test_the_store_runner_reports_store_errors() -> None:
    heard: list[StoreError] = []
    runner = StoreRunner(read_threads=1, on_error=heard.append)

    def broken() -> None:
        raise StoreError("the database is gone")

    def buggy() -> None:
        raise KeyError("not a store error")

    try:
        with pytest.raises(StoreError):
            runner.write_blocking(broken)
        with pytest.raises(KeyError):
            runner.write_blocking(buggy)
        assert runner.write_blocking(lambda: 42) == 42
    finally:
        runner.close()
    assert [str(error) for error in heard] == ["the database is gone"]


# --- docs/monitoring ----------------------------------------------------------------------

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _exposed_names() -> set[str]:
    families = ForwarderMetrics().registry.collect()
    return {family.name + suffix for family in families for suffix in _SUFFIXES[family.type]}


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\btaskfabric_[a-z_]+", text))


def test_the_alert_rules_use_exposed_metrics() -> None:
    text = (MONITORING / "alerts.yml").read_text()
    rules = [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"TaskfabricEndpointOffline", "TaskfabricWaitingTasksGrowing", "TaskfabricTaskErrorRateHigh"} <= names
    assert {"TaskfabricStoreErrors", "TaskfabricBrokerErrors"} <= names
    for rule in rules:
        assert rule["expr"] and rule["labels"]["severity"] and rule["annotations"]["summary"]
    used = _metric_names(" ".join(rule["expr"] for rule in rules))
    assert used and used <= _exposed_names(), used - _exposed_names()


def test_the_grafana_dashboard_uses_exposed_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    graphs = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [target["expr"] for panel in graphs for target in panel["targets"]]
    assert all(panel["targets"] and "gridPos" in panel for panel in graphs)
    used = _metric_names(" ".join(exprs))
    assert used <= _exposed_names(), used - _exposed_names()
    # every metric the forwarder defines is on the dashboard
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    assert shown == {family.name for family in ForwarderMetrics().registry.collect()}


# Each label a rule or panel names must be one its metric carries (or one Prometheus attaches),
# and each fixed value it compares with must be one the forwarder can emit: a misspelt label or
# value does not fail in Prometheus, it silently matches nothing and the alert never fires.
_SCRAPE_LABELS = frozenset({"instance", "job"})
_LABEL_VALUES = {
    "code": {code.value for code in ErrorCode} | {"OTHER"},
    "state": {"busy", "idle"},
    "hop": {"queued", "dispatch", "run", "return"},
    "operation": {"publish", "request"},
}
_SELECTOR = re.compile(r"\b(taskfabric_[a-z_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LABEL_VALUES_QUERY = re.compile(r"label_values\((taskfabric_[a-z_]+),\s*(\w+)\)")


def _labels_by_name() -> dict[str, set[str]]:
    """Every exposed series name (with its _total/_bucket/... suffix) -> its label names."""
    labels: dict[str, set[str]] = {}
    registry = ForwarderMetrics().registry
    for collector, names in registry._collector_to_names.items():
        own = set(getattr(collector, "_labelnames", None) or (getattr(collector, "_label", None),)) - {None}
        for name in names:
            labels[name] = own | ({"le"} if name.endswith("_bucket") else set())
    return labels


def _label_problems(expression: str, labels: dict[str, set[str]]) -> list[str]:
    problems = []
    for metric, matchers in _SELECTOR.findall(expression):
        for label, operator_, value in _MATCHER.findall(matchers):
            if label not in labels.get(metric, set()):
                problems.append(f"{metric} has no label {label!r}")
            elif operator_ in ("=", "!=") and label in _LABEL_VALUES and value not in _LABEL_VALUES[label]:
                problems.append(f"{metric}{{{label}}} is never {value!r}")
    used = set().union(*(labels.get(name, set()) for name in _metric_names(expression)))
    for grouping in _GROUPING.findall(expression):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in used | _SCRAPE_LABELS:
                problems.append(f"grouping by {label!r}, which none of {sorted(_metric_names(expression))} carries")
    return problems


def _monitoring_expressions() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [rule["expr"] for group in rules for rule in group["rules"]]
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [variable["definition"] for variable in dashboard["templating"]["list"]]
    return expressions


def test_the_monitoring_files_use_only_labels_and_values_the_metrics_carry() -> None:
    labels = _labels_by_name()
    expressions = _monitoring_expressions()
    problems = [problem for expression in expressions for problem in _label_problems(expression, labels)]
    assert problems == []
    for metric, label in _LABEL_VALUES_QUERY.findall(" ".join(expressions)):
        assert label in labels[metric], f"label_values({metric}, {label})"


def test_the_label_check_catches_a_misspelt_label_value_or_grouping() -> None:
    labels = _labels_by_name()
    assert (
        _label_problems('sum by (endpoint) (rate(taskfabric_tasks_failed_total{code!="TASK_FAILED"}[5m]))', labels)
        == []
    )
    assert _label_problems('taskfabric_tasks_failed_total{cod="TASK_FAILED"}', labels) == [
        "taskfabric_tasks_failed_total has no label 'cod'"
    ]
    assert _label_problems('taskfabric_workers{state="busyy"}', labels) == [
        "taskfabric_workers{state} is never 'busyy'"
    ]
    assert _label_problems("sum by (hop) (taskfabric_tasks_waiting)", labels) == [
        "grouping by 'hop', which none of ['taskfabric_tasks_waiting'] carries"
    ]
    assert _label_problems("sum by (le) (rate(taskfabric_task_hop_seconds_bucket[5m]))", labels) == []


def test_a_store_conflict_is_not_a_store_error() -> None:
    """A conflict (a name taken, a retried submission) is an answer of a working store."""
    heard: list[StoreError] = []
    runner = StoreRunner(read_threads=1, on_error=heard.append)

    def conflict() -> None:
        raise StoreConflict("endpoint name taken")

    try:
        with pytest.raises(StoreConflict):
            runner.write_blocking(conflict)
    finally:
        runner.close()
    assert heard == []


def test_batch_histogram_buckets_like_prometheus() -> None:
    """`le` buckets are cumulative and inclusive; negative values (clock skew) count as 0."""
    registry = CollectorRegistry()
    histogram = BatchHistogram("taskfabric_test_seconds", "a test", "hop", (0.01, 0.025, 1.0))
    registry.register(histogram)
    histogram.observe_many("run", [0.01, 0.011, -1.0, 20000.0])
    histogram.observe_many("run", [])
    histogram.observe_many("queued", [0.5])
    samples = {
        (sample.name, sample.labels.get("hop"), sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    bucket = "taskfabric_test_seconds_bucket"
    assert [samples[bucket, "run", le] for le in ("0.01", "0.025", "1.0", "+Inf")] == [2, 3, 3, 4]
    assert samples["taskfabric_test_seconds_count", "run", None] == 4
    assert samples["taskfabric_test_seconds_sum", "run", None] == pytest.approx(20000.021)
    assert [samples[bucket, "queued", le] for le in ("0.01", "0.025", "1.0", "+Inf")] == [0, 0, 1, 1]


# --- readiness ----------------------------------------------------------------------------


class _Store:
    def __init__(self, *, fails: bool) -> None:
        self.fails = fails

    def ping(self) -> None:
        if self.fails:
            raise StoreError("connection refused by db.internal:5432")


def _forwarder(*, store_fails: bool, broker_up: bool) -> Any:
    transport = MemoryTransport(MemoryBroker())
    if broker_up:
        transport.start()
    errors: list[StoreError] = []
    runner = StoreRunner(read_threads=1, on_error=errors.append)
    return SimpleNamespace(store=_Store(fails=store_fails), runner=runner, broker=SimpleNamespace(transport=transport))


@pytest.mark.parametrize(
    ("store_fails", "broker_up", "checks"),
    [
        (False, True, {"store": "ok", "broker": "ok"}),
        (True, True, {"store": "unavailable", "broker": "ok"}),
        (False, False, {"store": "ok", "broker": "unavailable"}),
        (True, False, {"store": "unavailable", "broker": "unavailable"}),
    ],
)
def test_readiness_names_the_part_that_fails(store_fails: bool, broker_up: bool, checks: dict[str, str]) -> None:
    forwarder = _forwarder(store_fails=store_fails, broker_up=broker_up)
    try:
        readiness = asyncio.run(check_readiness(forwarder))
    finally:
        forwarder.runner.close()
        forwarder.broker.transport.close()
    body = readiness.as_json()
    assert body == {"ready": not store_fails and broker_up, "checks": checks}
    assert "db.internal" not in json.dumps(body)  # no error text, no configuration


def test_a_forwarder_that_did_not_start_is_not_ready() -> None:
    assert asyncio.run(check_readiness(None)).as_json() == {
        "ready": False,
        "checks": {"store": "unavailable", "broker": "unavailable"},
    }
