"""`taskfabric bench`: how fast the fabric is, end to end, on this machine.

Scenarios (each run `--runs` times; the median is reported):

- **throughput**: N no-op tasks through `Executor.submit`, until every result is back.
- **latency**: sequential `submit(...).result()` calls; p50 and p99 of the round trip, and the
  median of each hop (client → forwarder → worker → forwarder → client) over the last 200 calls.
- **cold-start**: `taskfabric endpoint start` (broker and forwarder already up) to the first result.
- **backlog**: N tasks sent to a stopped endpoint, which is then started; all must complete; the
  forwarder's and the agent's peak memory (RSS) are sampled throughout.
- **endpoints** (only when named, once): `--endpoints` N registered endpoints heartbeating through
  simulated agents, tasks submitted to a random subset and drained; registration rate, broker
  memory and queue count, forwarder RSS and heartbeat ingest cost (taskfabric/tools/bench_endpoints.py).
- **payload** (only when named): data-heavy tasks, 1 MiB echoes and numpy arrays, with client,
  forwarder and agent memory, store growth and blob disk (`taskfabric/tools/bench_payload.py`).

By default it brings up a private local fabric (`taskfabric dev up` in a temporary
`TASKFABRIC_HOME`) and tears it down afterwards; `--url/--token/--endpoint` point it at a running
one instead (cold-start and backlog then need `--endpoint-name` of an endpoint on this machine).
Prints a table and one JSON line per scenario. Figures are measured, never asserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from taskfabric import __version__
from taskfabric.protocol import TaskStatus
from taskfabric.tools.bench_payload import PAYLOAD_TASKS

__all__ = ["BenchConfig", "bench", "run_bench"]

SCENARIOS = ("throughput", "latency", "cold-start", "backlog")
#: scenarios run only when named (`--scenarios endpoints`, `--scenarios payload`); endpoints runs
#: once, whatever `--runs` (bench_endpoints.py); payload: data-heavy tasks (bench_payload.py)
EXTRA_SCENARIOS = ("endpoints", "payload")


def noop() -> None:
    """The benchmark task: nothing, so the figures measure the fabric."""
    return


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    scenarios: tuple[str, ...] = SCENARIOS
    runs: int = 3
    throughput_tasks: int = 20_000
    latency_calls: int = 1_000
    backlog_tasks: int = 200_000
    workers: int = 2
    url: str | None = None
    token: str | None = None
    endpoint_id: str | None = None
    endpoint_name: str | None = None
    endpoints: int = 1000
    heartbeat_period_s: float = 5.0


@dataclasses.dataclass
class Fabric:
    url: str
    token: str
    endpoint_id: str
    endpoint_name: str | None
    forwarder_pid: int | None


# --- scenarios ------------------------------------------------------------------------------


def throughput(fabric: Fabric, tasks: int, progress: Callable[[int], None]) -> dict[str, Any]:
    from taskfabric.client import Client, Executor

    with Client(url=fabric.url, token=fabric.token) as client, Executor(fabric.endpoint_id, client=client) as executor:
        executor.submit(noop).result(timeout=120)  # warm: function registered, stream connected
        started = time.perf_counter()
        futures = [executor.submit(noop) for _ in range(tasks)]
        submitted = time.perf_counter()
        done = 0
        for future in futures:
            future.result(timeout=600)
            done += 1
            if done % 1000 == 0:
                progress(1000)
        finished = time.perf_counter()
    progress(done % 1000)
    return {
        "tasks_per_s": tasks / (finished - started),
        "elapsed_s": finished - started,
        "submit_calls_per_s": tasks / (submitted - started),
    }


def latency(fabric: Fabric, calls: int, progress: Callable[[int], None]) -> dict[str, Any]:
    from taskfabric.client import Client, Executor

    samples: list[float] = []
    calls_made: list[tuple[float, float, Any]] = []  # (sent, back) on the wall clock, task id
    with Client(url=fabric.url, token=fabric.token) as client, Executor(fabric.endpoint_id, client=client) as executor:
        for _ in range(20):  # warm up
            executor.submit(noop).result(timeout=60)
        for index in range(calls):
            sent = time.time()
            started = time.perf_counter()
            future = executor.submit(noop)
            future.result(timeout=60)
            elapsed = time.perf_counter() - started
            samples.append(elapsed * 1000)
            calls_made.append((sent, sent + elapsed, future.task_id))
            if index % 100 == 99:
                progress(100)
        hops = _hop_medians(client, calls_made[-_HOP_SAMPLE:])
    samples.sort()
    return {
        "p50_ms": _percentile(samples, 50),
        "p90_ms": _percentile(samples, 90),
        "p99_ms": _percentile(samples, 99),
        "max_ms": samples[-1],
        **hops,
    }


#: the latency calls whose hops are broken down (each costs a task lookup afterwards)
_HOP_SAMPLE = 200


def _hop_medians(client: Any, calls_made: list[tuple[float, float, Any]]) -> dict[str, float]:
    """Median time of each hop of a call, from the timestamps the service keeps per task: the
    forwarder accepting it (`created_at`), the worker receiving and finishing it, the forwarder
    receiving the result (`completed_at`). One clock is assumed: on a fabric spread over hosts
    the split is only as good as their clock synchronisation."""
    hops: dict[str, list[float]] = {
        name: [] for name in ("to_forwarder", "to_worker", "in_worker", "to_forwarder_back", "to_client")
    }
    for sent, back, task_id in calls_made:
        info = client.get_task(task_id)
        details = info.get("details") or {}
        marks = [sent, info.get("created_at"), details.get("received_at"), details.get("finished_at")]
        marks += [info.get("completed_at"), back]
        if any(mark is None for mark in marks):
            continue
        for name, start, end in zip(hops, marks, marks[1:], strict=False):
            hops[name].append((end - start) * 1000)
    return {f"hop_{name}_p50_ms": statistics.median(values) for name, values in hops.items() if values}


def cold_start(fabric: Fabric, progress: Callable[[int], None]) -> dict[str, Any]:
    from taskfabric.client import Client, Executor
    from taskfabric.endpoint_agent.local import LocalEndpoint, register_endpoint, start_endpoint, stop_endpoint

    name = _require_local_endpoint(fabric)
    stop_endpoint(name, timeout_s=60)
    with Client(url=fabric.url, token=fabric.token) as client:
        started = time.perf_counter()
        register_endpoint(name, client)
        start_endpoint(name, detach=True)
        agent_up = time.perf_counter()
        with Executor(fabric.endpoint_id, client=client) as executor:
            executor.submit(noop).result(timeout=120)
        first_result = time.perf_counter()
    progress(1)
    assert LocalEndpoint(name).pid() is not None
    return {"start_to_first_result_s": first_result - started, "start_command_s": agent_up - started}


def backlog(fabric: Fabric, tasks: int, progress: Callable[[int], None]) -> dict[str, Any]:
    from taskfabric.client import Client
    from taskfabric.endpoint_agent.local import LocalEndpoint, register_endpoint, start_endpoint, stop_endpoint

    name = _require_local_endpoint(fabric)
    stop_endpoint(name, timeout_s=60)
    sampler = _PeakMemory()
    if fabric.forwarder_pid:
        sampler.watch("forwarder", fabric.forwarder_pid)
    with Client(url=fabric.url, token=fabric.token) as client, sampler:
        function_id = client.register_function(noop)
        started = time.perf_counter()
        task_ids = _submit_many(client, fabric.endpoint_id, function_id, tasks, progress)
        submitted = time.perf_counter()
        register_endpoint(name, client)
        start_endpoint(name, detach=True)
        agent_pid = LocalEndpoint(name).pid()
        if agent_pid:
            sampler.watch("agent", agent_pid)
        missing, failed = _wait_all_done(client, task_ids, progress)
        finished = time.perf_counter()
    return {
        "tasks": tasks,
        "completed": tasks - missing,
        "lost": missing,
        "failed": failed,
        "submit_s": submitted - started,
        "drain_s": finished - submitted,
        "drain_tasks_per_s": tasks / (finished - submitted),
        "forwarder_peak_rss_mb": sampler.peak_mb("forwarder"),
        "agent_peak_rss_mb": sampler.peak_mb("agent"),
    }


def payload_scenario(fabric: Fabric, progress: Callable[[int], None]) -> dict[str, Any]:
    from taskfabric.endpoint_agent.local import LocalEndpoint
    from taskfabric.paths import taskfabric_home
    from taskfabric.tools.bench_payload import payload

    sampler = _PeakMemory()
    if fabric.forwarder_pid:
        sampler.watch("forwarder", fabric.forwarder_pid)
    agent_pid = LocalEndpoint(fabric.endpoint_name).pid() if fabric.endpoint_name else None
    if agent_pid:
        sampler.watch("agent", agent_pid)
    dev_root = taskfabric_home() / "dev" if fabric.forwarder_pid else None
    with sampler:
        return payload(fabric, progress, sampler=sampler, dev_root=dev_root)


def _submit_many(
    client: Any, endpoint_id: str, function_id: Any, tasks: int, progress: Callable[[int], None]
) -> list[Any]:
    task_ids: list[Any] = []
    for start in range(0, tasks, 5000):
        count = min(5000, tasks - start)
        batch = client.create_batch()
        for _ in range(count):
            batch.add(function_id)
        task_ids.extend(client.batch_run(endpoint_id, batch))
        progress(count // 2)
    return task_ids


def _wait_all_done(
    client: Any, task_ids: list[Any], progress: Callable[[int], None], timeout_s: float = 1800
) -> tuple[int, int]:
    """Poll batch status until every task is finished; returns how many never finished and how
    many finished with a failure."""
    remaining = list(task_ids)
    failed = 0
    deadline = time.monotonic() + timeout_s
    while remaining and time.monotonic() < deadline:
        still: list[Any] = []
        for start in range(0, len(remaining), 10_000):
            chunk = remaining[start : start + 10_000]
            outcomes = client.get_batch_result(chunk)
            for task_id in chunk:
                outcome = outcomes.get(task_id, {"pending": True})
                if outcome["pending"]:
                    still.append(task_id)
                elif outcome.get("status") != TaskStatus.SUCCESS:
                    failed += 1
        progress((len(remaining) - len(still)) // 2)
        remaining = still
        if remaining:
            time.sleep(0.5)
    return len(remaining), failed


def endpoints(fabric: Fabric, config: BenchConfig, progress: Callable[[int], None]) -> dict[str, Any]:
    from taskfabric.forwarder.settings import ForwarderSettings
    from taskfabric.tools.bench_endpoints import EndpointsConfig, EndpointsTarget, endpoints_scenario
    from taskfabric.tools.devfabric import DEV_USER, dev_root

    if fabric.forwarder_pid is None:
        raise click.ClickException("the endpoints scenario runs on a local fabric only (it needs the broker's admin)")
    target = EndpointsTarget(
        settings=ForwarderSettings.from_file(dev_root() / "forwarder.yaml"),
        forwarder_url=fabric.url,
        forwarder_pid=fabric.forwarder_pid,
        token=fabric.token,
        username=DEV_USER,
    )
    return endpoints_scenario(
        target, EndpointsConfig(endpoints=config.endpoints, heartbeat_period_s=config.heartbeat_period_s), progress
    )


def _require_local_endpoint(fabric: Fabric) -> str:
    if not fabric.endpoint_name:
        raise click.ClickException(
            "cold-start and backlog need --endpoint-name: an endpoint on this machine to restart"
        )
    return fabric.endpoint_name


class _PeakMemory:
    """Samples the resident memory of watched processes every 50 ms; keeps the peaks."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._watched: dict[str, Any] = {}
        self._peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, label: str, pid: int) -> None:
        with contextlib.suppress(self._psutil.Error):
            self._watched[label] = self._psutil.Process(pid)

    def peak_mb(self, label: str) -> float | None:
        peak = self._peaks.get(label)
        return round(peak / 2**20, 1) if peak is not None else None

    def __enter__(self) -> _PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for label, process in list(self._watched.items()):
                try:
                    rss = process.memory_info().rss
                except self._psutil.Error:
                    continue
                self._peaks[label] = max(self._peaks.get(label, 0), rss)


def _percentile(sorted_samples: list[float], percent: float) -> float:
    index = min(len(sorted_samples) - 1, max(0, round(percent / 100 * len(sorted_samples)) - 1))
    return sorted_samples[index]


# --- the fabric -----------------------------------------------------------------------------


@contextlib.contextmanager
def _fabric(config: BenchConfig, announce: Callable[[str], None]) -> Iterator[Fabric]:
    if config.url:
        if not (config.token and config.endpoint_id):
            raise click.ClickException("with --url, give --token and --endpoint too")
        yield Fabric(config.url, config.token, config.endpoint_id, config.endpoint_name, None)
        return
    from taskfabric.tools.devfabric import DEV_ENDPOINT, dev_down, dev_up

    with tempfile.TemporaryDirectory(prefix="taskfabric-bench-") as home:
        previous = os.environ.get("TASKFABRIC_HOME")
        os.environ["TASKFABRIC_HOME"] = home
        try:
            state = dev_up(workers=config.workers, announce=announce)
            assert state.endpoint_id
            yield Fabric(state.forwarder_url, state.token, state.endpoint_id, DEV_ENDPOINT, state.forwarder_pid)
        finally:
            dev_down(announce=lambda _message: None)
            if previous is None:
                os.environ.pop("TASKFABRIC_HOME", None)
            else:
                os.environ["TASKFABRIC_HOME"] = previous


# --- running --------------------------------------------------------------------------------

_HEADLINE: dict[str, tuple[str, str, str]] = {
    "throughput": ("tasks_per_s", "tasks/s", "≥ 8,000"),
    "latency": ("p50_ms", "ms p50", "p50 ≤ 2 ms, p99 ≤ 10 ms"),
    "cold-start": ("start_to_first_result_s", "s", "≤ 3 s"),
    "backlog": ("drain_tasks_per_s", "tasks/s draining", "none lost; RSS ≤ 300 / 150 MB"),
    "endpoints": ("broker_kb_per_endpoint_heartbeating", "KB broker memory per endpoint", "10,000 on one node"),
    "payload": ("echo_1mib_tasks_per_s", "tasks/s (1 MiB echo)", "≥ 2x Celery; client RSS ≤ 3x in flight"),
}


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key, value in runs[0].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return {
        key: statistics.median(run[key] for run in runs if run.get(key) is not None)
        for key in keys
        if any(run.get(key) is not None for run in runs)
    }


def _environment() -> dict[str, Any]:
    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "taskfabric": __version__,
        "date": datetime.date.today().isoformat(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compare(peer: str, options: dict[str, Any]) -> None:
    from taskfabric.tools.bench_compare import CompareConfig, parse_peer, run_compare

    if options.get("url"):
        raise click.BadParameter("runs on a local fabric only", param_hint="--compare with --url")
    name = parse_peer(peer)
    assert name is not None
    tasks = options["throughput_tasks"] if options["throughput_tasks"] != 20_000 else 5_000
    run_compare(
        CompareConfig(
            peer=name,
            rounds=options["runs"],
            latency_calls=options["latency_calls"],
            throughput_tasks=tasks,
            workers=options["workers"],
        )
    )


def run_bench(config: BenchConfig, *, echo: Callable[[str], None] = click.echo) -> list[dict[str, Any]]:
    """Run the scenarios; returns one record per scenario (parameters, runs, medians, machine)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console(stderr=True)
    records = []
    with _fabric(config, lambda message: console.print(message, style="dim")) as fabric:
        work = {
            "throughput": (config.throughput_tasks, lambda p: throughput(fabric, config.throughput_tasks, p)),
            "latency": (config.latency_calls, lambda p: latency(fabric, config.latency_calls, p)),
            "cold-start": (1, lambda p: cold_start(fabric, p)),
            "backlog": (config.backlog_tasks, lambda p: backlog(fabric, config.backlog_tasks, p)),
            "endpoints": (config.endpoints, lambda p: endpoints(fabric, config, p)),
            "payload": (2 * PAYLOAD_TASKS, lambda p: payload_scenario(fabric, p)),
        }
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bars:
            for name in config.scenarios:
                total, scenario = work[name]
                runs = []
                repeat = 1 if name in EXTRA_SCENARIOS else config.runs
                bar = bars.add_task(f"{name} ({repeat} runs)", total=total * repeat)
                for _ in range(repeat):
                    runs.append(scenario(lambda n, bar=bar: bars.advance(bar, n)))
                bars.update(bar, completed=total * repeat)
                records.append(
                    {
                        "scenario": name,
                        "parameters": _parameters(config, name),
                        "median": _median_of(runs),
                        "runs": runs,
                        **_environment(),
                    }
                )
    table = Table(
        title=f"taskfabric bench ({config.workers} workers, median of {config.runs} runs, {os.cpu_count()} CPUs)"
    )
    for column in ("scenario", "result", "target", "details"):
        table.add_column(column)
    for record in records:
        key, unit, target = _HEADLINE[record["scenario"]]
        median = record["median"]
        details = ", ".join(f"{k}={_fmt(v)}" for k, v in median.items() if k != key)
        table.add_row(record["scenario"], f"{_fmt(median.get(key))} {unit}", target, details)
    Console(width=max(120, Console().width)).print(table)
    for record in records:
        echo(json.dumps(record))
    return records


def _parameters(config: BenchConfig, name: str) -> dict[str, Any]:
    sizes = {
        "throughput": config.throughput_tasks,
        "latency": config.latency_calls,
        "backlog": config.backlog_tasks,
        "endpoints": config.endpoints,
    }
    return {
        "workers": config.workers,
        "runs": 1 if name in EXTRA_SCENARIOS else config.runs,
        "size": sizes.get(name, 1),
        "fabric": "given" if config.url else "local (taskfabric dev up)",
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"
    return str(value)


@click.command()
@click.option("--scenarios", default=",".join(SCENARIOS), show_default=True, help="Comma-separated scenarios to run.")
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--tasks",
    "throughput_tasks",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Throughput scenario size (5,000 with --compare unless given).",
)
@click.option(
    "--calls",
    "latency_calls",
    type=click.IntRange(min=1),
    default=1_000,
    show_default=True,
    help="Latency scenario size.",
)
@click.option(
    "--backlog",
    "backlog_tasks",
    type=click.IntRange(min=1),
    default=200_000,
    show_default=True,
    help="Backlog scenario size.",
)
@click.option(
    "--endpoints",
    type=click.IntRange(min=1, max=1_000_000),
    default=1000,
    show_default=True,
    help="Endpoints scenario size (registered endpoints).",
)
@click.option(
    "--heartbeat-s",
    "heartbeat_period_s",
    type=click.FloatRange(min=0.1, max=3600),
    default=5.0,
    show_default=True,
    help="Endpoints scenario: how often each simulated agent reports its status.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Workers of the local fabric's endpoint.",
)
@click.option("--url", default=None, help="Use a running forwarder instead of a local fabric.")
@click.option("--token", default=None, help="With --url: the token.")
@click.option("--endpoint", "endpoint_id", default=None, help="With --url: the endpoint id.")
@click.option(
    "--endpoint-name", default=None, help="With --url: that endpoint's name on this machine (for cold-start, backlog)."
)
@click.option(
    "--compare",
    default=None,
    metavar="PEER",
    help="Run taskfabric and PEER (celery) alternately on the local fabric's broker; print medians and ratios.",
)
def bench(**options: Any) -> None:
    """Measure throughput, latency, cold start and a large backlog, end to end."""
    peer = options.pop("compare")
    if peer is not None:
        _compare(peer, options)
        return
    scenarios = tuple(name.strip() for name in options.pop("scenarios").split(",") if name.strip())
    unknown = set(scenarios) - set(SCENARIOS) - set(EXTRA_SCENARIOS)
    if unknown:
        known = ", ".join(SCENARIOS + EXTRA_SCENARIOS)
        raise click.BadParameter(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {known}")
    run_bench(BenchConfig(scenarios=scenarios, **options))
