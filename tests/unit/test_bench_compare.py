"""The pure parts of `taskfabric bench --compare`: peer parsing, ratios, medians, formatting."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from taskfabric.tools.bench import bench
from taskfabric.tools.bench_compare import format_comparison, hop_medians, parse_peer, ratio, summarise


def test_parse_peer_accepts_known_names_in_any_case() -> None:
    assert parse_peer(" Celery ") == "celery"
    assert parse_peer(None) is None


def test_parse_peer_names_the_unknown_peer_and_the_known_ones() -> None:
    with pytest.raises(click.BadParameter, match=r"'dask'.*celery"):
        parse_peer("dask")


def test_ratio_is_ours_over_theirs_and_none_when_undefined() -> None:
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None
    assert ratio(1.0, 0.0) is None


def _round(ours: float, theirs: float) -> dict[str, dict[str, float]]:
    figures = {"latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "throughput_tasks_per_s": 100.0, "cold_start_s": 1.0}
    return {
        "taskfabric": {key: value * ours for key, value in figures.items()},
        "celery": {key: value * theirs for key, value in figures.items()},
    }


def test_summarise_takes_the_median_of_each_system_then_the_ratio() -> None:
    summary = summarise([_round(1, 2), _round(3, 2), _round(2, 10)])
    assert summary["taskfabric"]["latency_p50_ms"] == 2.0
    assert summary["celery"]["throughput_tasks_per_s"] == 200.0
    assert summary["ratio"]["latency_p99_ms"] == pytest.approx(1.0)


def test_format_comparison_prints_both_medians_and_the_ratio_per_metric() -> None:
    lines = format_comparison(summarise([_round(1, 4)]), "celery")
    assert lines[0].split()[:4] == ["metric", "taskfabric", "celery", "ratio"]
    latency = next(line for line in lines if line.startswith("round trip p50"))
    assert "1.00" in latency and "4.00" in latency and "0.25x" in latency
    assert all(line.split().count("-") == 3 for line in format_comparison({}, "celery")[1:])


def test_bench_rejects_an_unknown_peer_before_starting_anything() -> None:
    result = CliRunner().invoke(bench, ["--compare", "dask"])
    assert result.exit_code == 2
    assert "unknown peer 'dask'" in result.output


def test_bench_rejects_compare_with_a_given_fabric() -> None:
    result = CliRunner().invoke(bench, ["--compare", "celery", "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "local fabric only" in result.output


def test_hop_medians_cover_the_runs_that_have_each_hop() -> None:
    runs = [{"hop_a_p50_ms": 1.0, "latency_p50_ms": 9.0}, {"hop_a_p50_ms": 3.0, "hop_b_p50_ms": 2.0}, {}]
    assert hop_medians(runs) == {"hop_a_p50_ms": 2.0, "hop_b_p50_ms": 2.0}
