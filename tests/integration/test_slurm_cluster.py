"""The private single-node Slurm the scaling tests run against: up, idle, and running real jobs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from taskfabric.testing import wait_until
from taskfabric.testing.slurm import SlurmCluster

pytestmark = pytest.mark.slurm


def test_the_node_is_idle_in_the_default_debug_partition(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.partition == "debug"
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf_path)
    out = subprocess.run(
        ["sinfo", "--noheader", "--format=%P"], env=slurm_cluster.env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["debug*"]  # the one partition, and the default
    wait_until(lambda: slurm_cluster.node_state() == "idle", timeout_s=30, what="the node to be idle")
    daemons = {" ".join(proc.cmdline()).split()[0].rsplit("/", 1)[-1] for proc in slurm_cluster.processes()}
    assert {"munged", "slurmctld", "slurmd"} <= daemons


def test_sbatch_runs_a_job_to_completion(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out.txt"
    job_id = slurm_cluster.sbatch(f"#!/bin/sh\necho ran on $SLURM_JOB_PARTITION > {output}\n", "--time=1")
    wait_until(lambda: slurm_cluster.job_state(job_id) == "COMPLETED", timeout_s=60, what=f"job {job_id} to complete")
    assert output.read_text() == "ran on debug\n"
    assert job_id not in {job.job_id for job in slurm_cluster.squeue()}


def test_a_failing_job_is_reported_failed(slurm_cluster: SlurmCluster) -> None:
    job_id = slurm_cluster.sbatch("#!/bin/sh\nexit 3\n", "--time=1")
    wait_until(lambda: slurm_cluster.job_state(job_id) == "FAILED", timeout_s=60, what=f"job {job_id} to fail")


def test_stopping_a_cluster_leaves_no_process_behind(slurm_cluster: SlurmCluster) -> None:
    """A second, short-lived cluster (next to the session's) stopped with a job still running."""
    with SlurmCluster() as cluster:
        job_id = cluster.sbatch("#!/bin/sh\nsleep 300\n", "--time=10")
        wait_until(lambda: cluster.job_state(job_id) == "RUNNING", timeout_s=60, what="the job to run")

        def job_processes() -> list[psutil.Process]:
            found = cluster.processes()
            names = " ".join(" ".join(proc.cmdline()) for proc in found)
            return found if "slurmstepd" in names and "sleep 300" in names else []

        processes = wait_until(job_processes, timeout_s=30, what="slurmstepd and the job's sleep")
    assert cluster.processes() == []
    assert not any(proc.is_running() for proc in processes)
    assert cluster.stray_processes == []  # everything went by scancel and the pid files
    assert not cluster.directory.exists()
    assert slurm_cluster.node_state() in ("idle", "mixed", "allocated")  # the session's cluster is unharmed
