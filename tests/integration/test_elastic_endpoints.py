"""Elastic endpoints, end to end through a real agent: blocks scale with demand on the local
provider and on a real single-node Slurm, a block killed by the scheduler loses no task, managers
run inside a bubblewrap container, and a restart applies a changed config without losing work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from taskfabric.endpoint_agent.testing import EndpointHarness, RunningEndpoint
from taskfabric.errors import ErrorCode
from taskfabric.protocol import EndpointStatus
from taskfabric.testing import wait_until
from taskfabric.testing.slurm import SlurmCluster

pytestmark = pytest.mark.slow


def nap(x: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return x


def latest(endpoint: RunningEndpoint) -> EndpointStatus:
    return endpoint.collector.statuses[-1]


def blocks_of(status: EndpointStatus) -> int:
    return status.pending_blocks + status.running_blocks


def test_a_burst_scales_local_blocks_out_to_max_and_back_to_min(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start(
        prefetch=0,
        provider={"type": "LocalProvider", "init_blocks": 0, "min_blocks": 0, "max_blocks": 3},
        scaling={"workers_per_node": 1, "strategy_period_s": 0.3, "max_idle_time_s": 2.0},
    )
    wait_until(lambda: endpoint.collector.statuses, what="a first status")
    assert blocks_of(latest(endpoint)) == 0  # nothing runs before there is work
    ids = endpoint.submit([endpoint.factory.task(nap, i, seconds=1.0) for i in range(12)])
    wait_until(
        lambda: any(blocks_of(s) == 3 for s in endpoint.collector.statuses), timeout_s=30, what="max_blocks blocks"
    )
    assert block_files(endpoint)  # each block has its log folder and job script while it runs
    results = endpoint.wait(ids, timeout_s=90)
    assert sorted(endpoint.collector.value(r) for r in results.values()) == list(range(12))
    assert max(s.managers for s in endpoint.collector.statuses) == 3
    wait_until(
        lambda: blocks_of(latest(endpoint)) == 0 and latest(endpoint).managers == 0,
        timeout_s=60,
        what="scaled back to min_blocks=0",
    )
    decisions = {s.scaling for s in endpoint.collector.statuses if s.scaling}
    assert any("scale out" in d for d in decisions), decisions
    assert any("scale in" in d for d in decisions), decisions
    wait_until(lambda: not endpoint.agent.descendants(), what="no manager left")
    # issue 10 item 7.10: the folders and job scripts of ended blocks used to pile up
    wait_until(lambda: not block_files(endpoint), timeout_s=30, what="the ended blocks' files removed")


def block_files(endpoint: RunningEndpoint) -> list[Path]:
    """Block log folders and provider job files in the endpoint's blocks/ folder."""
    blocks = endpoint.directory / "blocks"
    return [*blocks.glob("block-*"), *blocks.glob("submit_scripts/taskfabric.*")]


def test_managers_and_tasks_run_inside_a_bubblewrap_container(
    endpoints: EndpointHarness, bwrap_sandbox: str, tmp_path: Path
) -> None:
    endpoint = endpoints.start(container={"container_type": "custom", "container_cmd_options": bwrap_sandbox})
    marker = tmp_path / "host-tmp-check"

    def inside() -> tuple[int, bool, bool]:
        import os as os_
        import pathlib

        pathlib.Path("/tmp/written-inside").write_text("x")
        try:
            pathlib.Path("/usr/taskfabric-probe").write_text("x")
            host_writable = True
        except OSError:
            host_writable = False
        return os_.getpid(), pathlib.Path("/tmp/written-inside").exists(), host_writable

    task_id = endpoint.run(inside)
    pid, wrote_tmp, host_writable = endpoint.collector.value(endpoint.wait([task_id], timeout_s=60)[task_id])
    assert pid < 100, "the worker runs in the sandbox's own PID namespace"
    assert wrote_tmp and not Path("/tmp/written-inside").exists(), "/tmp inside is private"
    assert not host_writable, "the host's file system is read-only inside"
    assert not marker.exists()


def test_a_restart_applies_a_changed_config_and_loses_no_task(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start(scaling={"workers_per_node": 1, "strategy_period_s": 0.5})
    ids = endpoint.submit([endpoint.factory.task(nap, i, seconds=0.7) for i in range(6)])
    endpoint.wait(ids[:1], timeout_s=60)
    config_path = endpoint.directory / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["scaling"]["workers_per_node"] = 2
    config_path.write_text(yaml.safe_dump(config))
    assert endpoint.agent.stop(timeout_s=60) == 0  # tasks running finish; the rest wait in the ledger
    endpoint.restart_agent()
    results = endpoint.wait(ids, timeout_s=90)
    assert sorted(endpoint.collector.value(r) for r in results.values()) == list(range(6))
    assert not endpoint.collector.duplicates
    wait_until(lambda: any(s.workers == 2 for s in endpoint.collector.statuses), what="the new worker count in effect")


@pytest.mark.slurm
def test_a_slurm_endpoint_scales_blocks_as_jobs_and_survives_scancel(
    endpoints: EndpointHarness, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in slurm_cluster.env_overrides.items():
        monkeypatch.setenv(name, value)  # the agent (a child process) runs sbatch/squeue/scancel with these
    endpoint = endpoints.start(
        provider={
            "type": "SlurmProvider",
            "partition": slurm_cluster.partition,
            "exclusive": False,
            "init_blocks": 0,
            "min_blocks": 0,
            "max_blocks": 1,
            "walltime": "00:10:00",
            "launcher": {"type": "SingleNodeLauncher"},
        },
        scaling={"workers_per_node": 2, "strategy_period_s": 0.5, "max_idle_time_s": 3.0},
        max_retries_on_system_failure=1,
    )
    # tasks submitted -> a block appears as a Slurm job -> its manager connects -> results come back
    first = endpoint.submit([endpoint.factory.task(nap, i, seconds=0.1) for i in range(4)])
    wait_until(lambda: _live_jobs(slurm_cluster), timeout_s=30, what="a Slurm job for the block")
    results = endpoint.wait(first, timeout_s=120)
    assert sorted(endpoint.collector.value(r) for r in results.values()) == [0, 1, 2, 3]
    # idle past max_idle_time_s with min_blocks=0: the block is scaled in and its job ends
    wait_until(lambda: not _live_jobs(slurm_cluster), timeout_s=60, what="the idle block's job gone")
    wait_until(lambda: blocks_of(latest(endpoint)) == 0, what="no blocks in the status")

    # a block killed by scancel mid-task: its tasks run again (or end as a typed error), none lost
    second = endpoint.submit([endpoint.factory.task(nap, i, seconds=4.0) for i in range(2)])
    wait_until(
        lambda: any(s.managers == 1 and s.idle_workers == 0 for s in endpoint.collector.statuses[-3:]),
        timeout_s=60,
        what="tasks running in a block",
    )
    jobs = _live_jobs(slurm_cluster)
    assert len(jobs) == 1
    slurm_cluster.run("scancel", jobs[0])
    outcomes = endpoint.wait(second, timeout_s=180)
    for task_id in second:
        result = outcomes[task_id]
        assert result.ok or (result.error is not None and result.error.code == ErrorCode.MANAGER_LOST), result
    assert sum(1 for task_id in second if outcomes[task_id].ok and outcomes[task_id].attempts == 2) >= 1
    assert not endpoint.collector.duplicates


def _live_jobs(cluster: SlurmCluster) -> list[str]:
    """Ids of the jobs pending, running or completing."""
    return [job.job_id for job in cluster.squeue()]
