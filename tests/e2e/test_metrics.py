"""Metrics and health end to end: a known workload through a real forwarder, the session's broker
and a real endpoint agent (managers, workers), then /metrics scraped and parsed the way Prometheus
does; /healthz, /readyz and `taskfabric forwarder status --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from taskfabric.client import Executor
from taskfabric.exit_codes import RET_OK
from taskfabric.testing import unique_name

Fabric = Any  # the `metered_fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow

METRICS_TOKEN = "metrics-token-of-the-e2e-tests"  # conftest.METRICS_TOKEN
OK_TASKS = 30
FAILING_TASKS = 7


def double(x: int) -> int:
    return 2 * x


def refuse(x: int) -> int:
    raise ValueError(f"refused {x}")


@pytest.fixture(scope="module")
def workload(metered_fabric: Fabric) -> tuple[str, list[str]]:
    """30 tasks that succeed and 7 that fail, all finished: (endpoint id, task ids)."""
    endpoint = metered_fabric.start_endpoint()
    with metered_fabric.client() as client, Executor(endpoint, client=client) as executor:
        good = [executor.submit(double, i) for i in range(OK_TASKS)]
        bad = [executor.submit(refuse, i) for i in range(FAILING_TASKS)]
        assert [future.result(timeout=120) for future in good] == [2 * i for i in range(OK_TASKS)]
        for future in bad:
            with pytest.raises(ValueError, match="refused"):
                future.result(timeout=120)
        task_ids = [str(future.task_id) for future in good + bad]
    return endpoint, task_ids


def _scrape(fabric: Fabric) -> str:
    answer = httpx.get(f"{fabric.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


def _samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def test_counters_match_the_workload_exactly(metered_fabric: Fabric, workload: tuple[str, list[str]]) -> None:
    endpoint, task_ids = workload
    text = _scrape(metered_fabric)
    samples = _samples(text)
    total = OK_TASKS + FAILING_TASKS
    assert _value(samples, "taskfabric_tasks_submitted_total", endpoint=endpoint) == total
    assert _value(samples, "taskfabric_tasks_completed_total", endpoint=endpoint) == OK_TASKS
    assert _value(samples, "taskfabric_tasks_failed_total", endpoint=endpoint, code="TASK_FAILED") == FAILING_TASKS
    assert [s for s in samples if s.name == "taskfabric_tasks_failed_total" and s.labels["code"] != "TASK_FAILED"] == []
    assert _value(samples, "taskfabric_results_total", endpoint=endpoint) == total
    assert (_value(samples, "taskfabric_result_messages_total", endpoint=endpoint) or 0) >= 1
    # every finished task observed once end to end, and once per hop it carries timestamps for
    assert _value(samples, "taskfabric_task_latency_seconds_count", endpoint=endpoint) == total
    for hop in ("queued", "dispatch", "run", "return"):
        assert _value(samples, "taskfabric_task_hop_seconds_count", hop=hop) == total
    # state at scrape time: nothing left waiting; the endpoint online with its 2 workers
    assert _value(samples, "taskfabric_tasks_waiting", endpoint=endpoint) == 0
    assert _value(samples, "taskfabric_tasks_running", endpoint=endpoint) == 0
    assert _value(samples, "taskfabric_endpoint_online", endpoint=endpoint) == 1
    assert _value(samples, "taskfabric_endpoints_online") == 1
    busy = _value(samples, "taskfabric_workers", endpoint=endpoint, state="busy")
    idle = _value(samples, "taskfabric_workers", endpoint=endpoint, state="idle")
    assert busy is not None and idle is not None and busy + idle == 2
    assert _value(samples, "taskfabric_broker_connected") == 1
    assert _value(samples, "taskfabric_store_errors_total") == 0
    # HTTP requests by route template: the submissions, under the template, not the raw path
    submit_route = "/v1/endpoints/{endpoint_id}/tasks"
    submits = _value(samples, "taskfabric_http_requests_total", route=submit_route, method="POST", status="201")
    assert submits is not None and submits >= 1
    routes = {s.labels["route"] for s in samples if s.name == "taskfabric_http_requests_total"}
    assert not any(endpoint in route for route in routes)
    # bounded cardinality: no task id, no user token anywhere in the exposition
    assert not any(task_id in text for task_id in task_ids)
    assert metered_fabric.token not in text


def test_metrics_need_the_metrics_token(metered_fabric: Fabric) -> None:
    url = f"{metered_fabric.url}/metrics"
    missing = httpx.get(url, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "AUTHENTICATION_REQUIRED"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token-of-some-length"}, timeout=30).status_code == 401
    # a user's API token is not the metrics token
    assert httpx.get(url, headers={"Authorization": f"Bearer {metered_fabric.token}"}, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30).status_code == 200


def test_healthz_and_readyz_answer_without_a_token(metered_fabric: Fabric) -> None:
    alive = httpx.get(f"{metered_fabric.url}/healthz", timeout=30)
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    ready = httpx.get(f"{metered_fabric.url}/readyz", timeout=30)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"store": "ok", "broker": "ok"}}
    # nothing of the configuration: no URLs, hosts, database paths or credentials
    for leak in ("amqp", "sqlite", "http", "127.0.0.1", "guest", str(metered_fabric.home)):
        assert leak not in alive.text + ready.text


def test_forwarder_status_json(metered_fabric: Fabric) -> None:
    taskfabric = str(Path(sys.executable).parent / "taskfabric")
    command = [taskfabric, "forwarder", "status", "--url", metered_fabric.url, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == RET_OK, done.stderr
    status = json.loads(done.stdout)
    assert status == {
        "url": metered_fabric.url,
        "reachable": True,
        "alive": True,
        "ready": True,
        "checks": {"store": "ok", "broker": "ok"},
    }


def test_waiting_tasks_of_an_offline_endpoint_and_their_cancellation(metered_fabric: Fabric) -> None:
    """Tasks for an endpoint whose agent never started wait (a gauge read from the store); once
    cancelled they are counted as such and wait no longer."""
    with metered_fabric.client() as client:
        parked = client.register_endpoint(unique_name("parked"))["endpoint_id"]
        function_id = client.register_function(double)
        batch = client.create_batch()
        for i in range(5):
            batch.add(function_id, i)
        task_ids = client.batch_run(parked, batch)
        samples = _samples(_scrape(metered_fabric))
        assert _value(samples, "taskfabric_tasks_submitted_total", endpoint=parked) == 5
        assert _value(samples, "taskfabric_tasks_waiting", endpoint=parked) == 5
        assert _value(samples, "taskfabric_endpoint_online", endpoint=parked) == 0
        assert _value(samples, "taskfabric_workers", endpoint=parked, state="idle") == 0
        assert all(client.cancel(task_ids).values())
        samples = _samples(_scrape(metered_fabric))
        assert _value(samples, "taskfabric_tasks_cancelled_total", endpoint=parked) == 5
        assert _value(samples, "taskfabric_tasks_waiting", endpoint=parked) == 0
        assert _value(samples, "taskfabric_tasks_completed_total", endpoint=parked) is None
