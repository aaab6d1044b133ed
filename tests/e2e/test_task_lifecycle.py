"""A task's life as a researcher sees it, end to end (real broker, forwarder, agents, managers and
workers): the `running` state and its attempts, each task's own stdout/stderr, and what a task
runs in (per-call walltime through `options()`, resource specification, working directory and
environment)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from taskfabric.cli import main
from taskfabric.client import Executor, WalltimeExceeded
from taskfabric.protocol import TaskStatus
from taskfabric.testing import wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow

#: kept of each stream on the output endpoint, small enough to cut in a test
MAX_OUTPUT_BYTES = 200


@pytest.fixture(scope="module")
def endpoint(fabric: Fabric) -> str:
    return fabric.start_endpoint()


@pytest.fixture(scope="module")
def one_worker(fabric: Fabric) -> str:
    """An endpoint with a single worker (so consecutive tasks share it) and a small output limit."""
    return fabric.start_endpoint(scaling={"workers_per_node": 1}, max_output_bytes=MAX_OUTPUT_BYTES)


# --- functions the tasks run ----------------------------------------------------------------


def wait_for_file(path: str) -> str:
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def dies_on_first_attempt(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text("first attempt")
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies with the task running
    return "second attempt"


def speaks(word: str) -> int:
    print(f"{word} on stdout")
    print(f"{word} on stderr", file=sys.stderr)
    subprocess.run([sys.executable, "-c", f"print('{word} from a subprocess')"], check=True)
    return os.getpid()


def speaks_at_length(size: int) -> None:
    sys.stdout.write("x" * (size - 4) + "END\n")


def speaks_then_fails() -> None:
    print("about to fail")
    raise RuntimeError("failed on purpose")


def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def echo_keywords(**kwargs: Any) -> dict[str, Any]:
    return kwargs


def environment() -> dict[str, str | None]:
    return {
        name: os.environ.get(name)
        for name in ("TASKFABRIC_TASK_ID", "TASKFABRIC_NUM_CORES", "OMP_NUM_THREADS", "TASKFABRIC_MEMORY_MB")
    }


def leaves_traces() -> tuple[str, int]:
    os.environ["SET_BY_THE_FIRST_TASK"] = "leaked"
    Path("scratch.txt").write_text("left behind")
    return os.getcwd(), os.getpid()


def looks_around() -> tuple[str, int, str | None, list[str]]:
    return os.getcwd(), os.getpid(), os.environ.get("SET_BY_THE_FIRST_TASK"), os.listdir(".")


# --- the running state ------------------------------------------------------------------------


def test_a_task_shows_running_while_it_runs_then_success(fabric: Fabric, endpoint: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit(wait_for_file, str(release))
        wait_until(lambda: future.task_id is not None, timeout_s=30, what="the task accepted")
        running = wait_until(
            lambda: (info := client.get_task(future.task_id))["status"] == TaskStatus.RUNNING and info,
            timeout_s=60,
            interval_s=0.05,
            what="the task running",
        )
        assert running["details"]["started_at"] >= running["created_at"]
        assert running["details"]["attempts"] == 1 and running["completed_at"] is None
        batch = client.get_batch_result([future.task_id])[future.task_id]
        assert batch["status"] == TaskStatus.RUNNING and batch["pending"]
        shown = CliRunner().invoke(
            main,
            ["task", "show", str(future.task_id), "--json"],
            env={"TASKFABRIC_URL": fabric.url, "TASKFABRIC_TOKEN": fabric.token},
            catch_exceptions=False,
        )
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["status"] == TaskStatus.RUNNING
        assert not future.done()

        release.write_text("go")
        assert future.result(timeout=60) == "released"
        done = client.get_task(future.task_id)
        assert done["status"] == TaskStatus.SUCCESS and done["details"]["attempts"] == 1
        assert done["details"]["started_at"] is not None


def test_a_task_whose_worker_died_once_ends_with_two_attempts(fabric: Fabric, endpoint: str, tmp_path: Path) -> None:
    marker = tmp_path / "first-attempt"
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit(dies_on_first_attempt, str(marker))
        assert future.result(timeout=90) == "second attempt"
        assert marker.exists()
        info = client.get_task(future.task_id)
        assert info["status"] == TaskStatus.SUCCESS and info["details"]["attempts"] == 2


# --- output -----------------------------------------------------------------------------------


def test_each_task_gets_its_own_output_even_from_subprocesses(fabric: Fabric, one_worker: str) -> None:
    with fabric.client() as client, Executor(one_worker, client=client) as executor:
        first = executor.submit(speaks, "alpha")
        first_pid = first.result(timeout=60)
        second = executor.submit(speaks, "beta")
        assert second.result(timeout=60) == first_pid  # the same worker ran both
        assert first.stdout == "alpha on stdout\nalpha from a subprocess\n"
        assert first.stderr == "alpha on stderr\n"
        assert second.stdout == "beta on stdout\nbeta from a subprocess\n"
        assert second.stderr == "beta on stderr\n"
        info = client.get_task(second.task_id)
        assert (info["stdout"], info["stderr"]) == (second.stdout, second.stderr)
        shown = CliRunner().invoke(
            main,
            ["task", "show", str(first.task_id)],
            env={"TASKFABRIC_URL": fabric.url, "TASKFABRIC_TOKEN": fabric.token},
            catch_exceptions=False,
        )
        assert "alpha from a subprocess" in shown.output and "alpha on stderr" in shown.output


def test_long_output_keeps_its_end_after_a_note(fabric: Fabric, one_worker: str) -> None:
    size = 5 * MAX_OUTPUT_BYTES
    with fabric.client() as client, Executor(one_worker, client=client) as executor:
        future = executor.submit(speaks_at_length, size)
        future.result(timeout=60)
        cut = size - MAX_OUTPUT_BYTES
        assert future.stdout == f"[... {cut} bytes truncated ...]\n" + "x" * (MAX_OUTPUT_BYTES - 4) + "END\n"
        assert client.get_task(future.task_id)["stdout"] == future.stdout


def test_a_failed_task_keeps_its_output(fabric: Fabric, one_worker: str) -> None:
    with fabric.client() as client, Executor(one_worker, client=client) as executor:
        future = executor.submit(speaks_then_fails)
        with pytest.raises(RuntimeError, match="failed on purpose"):
            future.result(timeout=60)
        assert future.stdout == "about to fail\n"
        info = client.get_task(future.task_id)
        assert info["status"] == TaskStatus.FAILED and info["stdout"] == "about to fail\n"


# --- what a task runs in --------------------------------------------------------------------


def test_a_walltime_through_options_applies_to_that_call_only(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        limited = executor.options(walltime_s=1)
        over = limited.submit(wait_for_file, f"/nonexistent/{uuid.uuid4()}")
        unlimited = executor.submit(sleeps, 2.5)  # longer than the view's walltime, and no limit
        with pytest.raises(WalltimeExceeded):
            over.result(timeout=90)
        assert unlimited.result(timeout=90) == 2.5
        # the view's walltime does not take the function's own keyword arguments
        assert limited.submit(echo_keywords, walltime_s="mine").result(timeout=60) == {"walltime_s": "mine"}


def test_the_resource_specification_reaches_the_task_environment(fabric: Fabric, endpoint: str) -> None:
    with fabric.client() as client:
        with Executor(endpoint, client=client, resource_specification={"num_cores": 2}) as executor:
            future = executor.submit(environment)
            assert future.result(timeout=60) == {
                "TASKFABRIC_TASK_ID": str(future.task_id),
                "TASKFABRIC_NUM_CORES": "2",
                "OMP_NUM_THREADS": "2",
                "TASKFABRIC_MEMORY_MB": None,
            }
            other = executor.options(resource_specification={"memory_mb": 512}).submit(environment).result(timeout=60)
            assert other["TASKFABRIC_MEMORY_MB"] == "512" and other["TASKFABRIC_NUM_CORES"] is None
        with Executor(endpoint, client=client) as plain:
            assert plain.submit(environment).result(timeout=60)["OMP_NUM_THREADS"] is None


def test_each_task_starts_in_an_empty_directory_and_leaves_no_environment_behind(
    fabric: Fabric, one_worker: str
) -> None:
    with fabric.client() as client, Executor(one_worker, client=client) as executor:
        first = executor.submit(leaves_traces)
        first_cwd, first_pid = first.result(timeout=60)
        second_cwd, second_pid, leaked, files = executor.submit(looks_around).result(timeout=60)
    assert second_pid == first_pid  # the same worker process
    assert leaked is None and files == []  # the first task's file and variable are gone
    assert second_cwd == first_cwd  # the worker's own directory, emptied
    assert not (Path(first_cwd).parent / str(first.task_id)).exists()  # what it left was removed
