"""`taskfabric bench --compare celery`: taskfabric and a peer system, side by side, in one window.

Both systems run on the same RabbitMQ (the local fabric's broker), with the same number of
workers, alternately (A B A B A B): each round runs taskfabric's cold start, sequential round
trip and throughput, then the peer's. On a shared, noisy machine the ratio between the two in
the same window is what means something, not either absolute figure.

The peer's code lives in `benchmarks/peers/` (a Celery app); its packages come with the
`taskfabric[bench-peers]` extra. Nothing here is asserted: figures are printed and returned.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

__all__ = [
    "METRICS",
    "PEERS",
    "CompareConfig",
    "Metric",
    "format_comparison",
    "hop_medians",
    "parse_peer",
    "ratio",
    "run_compare",
    "summarise",
]

PEERS = ("celery",)

#: where the peers' code lives in a source checkout (`benchmarks/peers/`)
DEFAULT_PEERS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One figure compared between the systems; `better` says which way is good."""

    key: str
    label: str
    better: str  # "lower" or "higher"
    target: str


METRICS = (
    Metric("latency_p50_ms", "round trip p50 (ms)", "lower", "ratio ≤ 1"),
    Metric("latency_p99_ms", "round trip p99 (ms)", "lower", "ratio ≤ 2"),
    Metric("throughput_tasks_per_s", "throughput (tasks/s)", "higher", "ratio ≥ 10"),
    Metric("cold_start_s", "cold start to first result (s)", "lower", "ratio ≤ 1"),
    Metric("echo_1mib_tasks_per_s", "1 MiB echo (tasks/s)", "higher", "ratio ≥ 2"),
)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    peer: str = "celery"
    rounds: int = 3
    latency_calls: int = 1_000
    throughput_tasks: int = 5_000
    #: tasks of the 1 MiB echo scenario (issue 15); 0 leaves it out
    echo_tasks: int = 1_000
    workers: int = 2
    peers_dir: Path = DEFAULT_PEERS_DIR


# --- pure parts ------------------------------------------------------------------------------


def parse_peer(value: str | None) -> str | None:
    """The `--compare` value, checked: a known peer's name (case-insensitive), or None."""
    if value is None:
        return None
    name = value.strip().lower()
    if name not in PEERS:
        raise click.BadParameter(f"unknown peer {value!r}; known: {', '.join(PEERS)}", param_hint="--compare")
    return name


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either is missing or theirs is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """Medians over the rounds for each system and metric, and taskfabric / peer ratios.

    `rounds` is one `{"taskfabric": {...}, "<peer>": {...}}` per round."""
    systems = list(rounds[0]) if rounds else []
    medians: dict[str, dict[str, float | None]] = {}
    for system in systems:
        medians[system] = {}
        for metric in METRICS:
            values = [r[system][metric.key] for r in rounds if r.get(system, {}).get(metric.key) is not None]
            medians[system][metric.key] = statistics.median(values) if values else None
    if len(systems) == 2:
        ours, theirs = systems
        medians["ratio"] = {m.key: ratio(medians[ours][m.key], medians[theirs][m.key]) for m in METRICS}
    return medians


def hop_medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each `hop_*` figure over the runs that have it, in the order first seen."""
    names = list(dict.fromkeys(key for run in runs for key in run if key.startswith("hop_")))
    return {name: statistics.median(run[name] for run in runs if name in run) for name in names}


def format_comparison(summary: dict[str, dict[str, float | None]], peer: str) -> list[str]:
    """Plain-text lines: one per metric with both medians and the ratio."""
    lines = [f"{'metric':34} {'taskfabric':>12} {peer:>12} {'ratio':>8}  target"]
    for metric in METRICS:
        ours = summary.get("taskfabric", {}).get(metric.key)
        theirs = summary.get(peer, {}).get(metric.key)
        factor = summary.get("ratio", {}).get(metric.key)
        lines.append(
            f"{metric.label:34} {_number(ours):>12} {_number(theirs):>12} {_factor(factor):>8}  {metric.target}"
        )
    return lines


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _factor(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# --- the peer: Celery --------------------------------------------------------------------------


class CeleryPeer:
    """A Celery worker (prefork, `workers` processes, rpc result backend) on the given broker,
    consuming a queue of its own; the client side runs in this process."""

    def __init__(self, amqp_url: str, workers: int, peers_dir: Path) -> None:
        self._peers_dir = peers_dir
        self._workers = workers
        self._env = {
            **os.environ,
            "TASKFABRIC_PEER_AMQP_URL": amqp_url,
            "TASKFABRIC_PEER_QUEUE": f"bench-peer-{uuid.uuid4().hex[:12]}",
        }
        os.environ.update({k: self._env[k] for k in ("TASKFABRIC_PEER_AMQP_URL", "TASKFABRIC_PEER_QUEUE")})
        if str(peers_dir) not in sys.path:
            sys.path.insert(0, str(peers_dir))
        self._app_module = importlib.import_module("celery_app")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "celery", "--quiet", "-A", "celery_app", "worker", "--pool", "prefork"]
        command += ["--concurrency", str(self._workers), "--without-gossip", "--without-mingle"]
        command += ["--without-heartbeat", "--loglevel", "WARNING"]
        self._process = subprocess.Popen(command, cwd=self._peers_dir, env=self._env)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def cold_start(self) -> float:
        self.stop()
        started = time.perf_counter()
        self.start()
        self._app_module.noop.delay().get(timeout=120)
        return time.perf_counter() - started

    def latency(self, calls: int) -> tuple[float, float]:
        noop = self._app_module.noop
        for _ in range(20):
            noop.delay().get(timeout=60)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            noop.delay().get(timeout=60)
            samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        return _percentile(samples, 50), _percentile(samples, 99)

    def echo_1mib(self, tasks: int) -> float:
        """`tasks` echoes of one 1 MiB bytes argument (msgpack: bytes as they are), all sent, then collected."""
        echo = self._app_module.echo
        data = os.urandom(_MIB)
        echo.delay(b"warm").get(timeout=60)
        started = time.perf_counter()
        pending = [echo.delay(data) for _ in range(tasks)]
        for result in pending:
            if len(result.get(timeout=600)) != _MIB:
                raise RuntimeError("a Celery echo came back with the wrong size")
        return tasks / (time.perf_counter() - started)

    def throughput(self, tasks: int) -> float:
        noop = self._app_module.noop
        noop.delay().get(timeout=60)
        started = time.perf_counter()
        pending = [noop.delay() for _ in range(tasks)]
        for result in pending:
            result.get(timeout=600)
        return tasks / (time.perf_counter() - started)


_MIB = 1024 * 1024


def _percentile(sorted_samples: list[float], percent: float) -> float:
    index = min(len(sorted_samples) - 1, max(0, round(percent / 100 * len(sorted_samples)) - 1))
    return sorted_samples[index]


# --- running ------------------------------------------------------------------------------------


def _round_taskfabric(fabric: Any, config: CompareConfig) -> dict[str, float]:
    from taskfabric.tools.bench import cold_start, latency, throughput
    from taskfabric.tools.bench_payload import echo_1mib

    def quiet(_n: int) -> None:
        return None

    started = cold_start(fabric, quiet)
    trip = latency(fabric, config.latency_calls, quiet)
    rate = throughput(fabric, config.throughput_tasks, quiet)
    figures = {
        "cold_start_s": started["start_to_first_result_s"],
        "latency_p50_ms": trip["p50_ms"],
        "latency_p99_ms": trip["p99_ms"],
        "throughput_tasks_per_s": rate["tasks_per_s"],
        **{key: value for key, value in trip.items() if key.startswith("hop_")},
    }
    if config.echo_tasks:
        figures["echo_1mib_tasks_per_s"] = echo_1mib(fabric, config.echo_tasks)
    return figures


def _round_peer(peer: CeleryPeer, config: CompareConfig) -> dict[str, float]:
    started = peer.cold_start()
    p50, p99 = peer.latency(config.latency_calls)
    rate = peer.throughput(config.throughput_tasks)
    figures = {"cold_start_s": started, "latency_p50_ms": p50, "latency_p99_ms": p99, "throughput_tasks_per_s": rate}
    if config.echo_tasks:
        figures["echo_1mib_tasks_per_s"] = peer.echo_1mib(config.echo_tasks)
    return figures


@contextlib.contextmanager
def _peer(config: CompareConfig, amqp_url: str) -> Iterator[CeleryPeer]:
    try:
        importlib.import_module("celery")
    except ImportError:
        raise click.ClickException("--compare celery needs Celery: pip install 'taskfabric[bench-peers]'") from None
    peer = CeleryPeer(amqp_url, config.workers, config.peers_dir)
    try:
        yield peer
    finally:
        peer.stop()


def _local_amqp_url() -> str:
    import yaml

    from taskfabric.paths import taskfabric_home

    settings = yaml.safe_load((taskfabric_home() / "dev" / "forwarder.yaml").read_text())
    return str(settings["amqp_url"])


def run_compare(config: CompareConfig, *, echo: Callable[[str], None] = click.echo) -> dict[str, Any]:
    """Bring up a local fabric, run taskfabric and the peer alternately for `config.rounds`
    rounds, print every round, the medians and the ratios; return them as one record."""
    from taskfabric.tools.bench import BenchConfig, _environment, _fabric

    rounds: list[dict[str, dict[str, float]]] = []
    load_before = os.getloadavg()[0]
    with _fabric(BenchConfig(workers=config.workers), echo) as fabric, _peer(config, _local_amqp_url()) as peer:
        for index in range(config.rounds):
            ours = _round_taskfabric(fabric, config)
            theirs = _round_peer(peer, config)
            rounds.append({"taskfabric": ours, config.peer: theirs})
            echo(f"round {index + 1}: taskfabric {_brief(ours)} | {config.peer} {_brief(theirs)}")
    summary = summarise(rounds)
    for line in format_comparison(summary, config.peer):
        echo(line)
    hops = hop_medians([r["taskfabric"] for r in rounds])
    if hops:
        echo("taskfabric hops (median over rounds, ms): " + ", ".join(f"{k}={v:.2f}" for k, v in hops.items()))
    record = {
        "comparison": config.peer,
        "parameters": {
            "rounds": config.rounds,
            "latency_calls": config.latency_calls,
            "throughput_tasks": config.throughput_tasks,
            "echo_tasks": config.echo_tasks,
            "workers": config.workers,
            "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0],
        },
        "rounds": rounds,
        "median": summary,
        "taskfabric_hops_median_ms": hops,
        **_environment(),
    }
    echo(json.dumps(record))
    return record


def _brief(figures: dict[str, float]) -> str:
    return ", ".join(f"{key}={_number(value)}" for key, value in figures.items())
