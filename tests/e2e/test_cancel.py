"""Cancelling tasks end to end: a real forwarder, broker, agent, manager and workers. A cancelled
task that has not started never runs (marker files prove it); a running one loses its worker
(SIGTERM, SIGKILL after the grace period) and the next task gets a fresh worker."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskfabric.client import Executor, TaskCancelled
from taskfabric.testing import wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = pytest.mark.slow

ONE_WORKER: dict[str, Any] = {"scaling": {"workers_per_node": 1, "strategy_period_s": 0.5}}


def hold(pid_file: str, seconds: float) -> int:
    """Note this worker's pid (one line per run), then stay busy."""
    with open(pid_file, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def hold_ignoring_sigterm(pid_file: str, seconds: float) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return hold(pid_file, seconds)


def mark(marker: str) -> str:
    """The proof that a task ran."""
    Path(marker).write_text("ran")
    return "ran"


def square(x: int) -> int:
    return x * x


def _pids(pid_file: Path) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []


def _gone(pid: int) -> bool:
    """True once the process has exited and been reaped (or is a zombie about to be)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _busy_worker(executor: Executor, pid_file: Path, fn: Any = hold) -> tuple[Any, int]:
    future = executor.submit(fn, str(pid_file), 60)
    wait_until(lambda: _pids(pid_file), timeout_s=60, what="the long task running")
    return future, _pids(pid_file)[0]


@pytest.mark.parametrize("prefetch", [0, 4], ids=["held-by-agent", "queued-at-manager"])
def test_a_cancelled_waiting_task_never_runs(fabric: Fabric, tmp_path: Path, prefetch: int) -> None:
    endpoint = fabric.start_endpoint(**ONE_WORKER, prefetch=prefetch)
    marker = tmp_path / "ran"
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        busy, _pid = _busy_worker(executor, tmp_path / "busy.pid")
        waiting = executor.submit(mark, str(marker))
        wait_until(lambda: waiting.task_id is not None, what="the waiting task accepted")
        # it reaches the endpoint (agent or manager) and waits there behind the busy worker
        wait_until(
            lambda: client.get_endpoint_status(endpoint)["outstanding_tasks"] >= 2,
            timeout_s=30,
            what="both tasks at the endpoint",
        )
        assert waiting.cancel_remote() is True
        with pytest.raises(TaskCancelled):
            waiting.result(timeout=30)
        assert client.get_task(waiting.task_id)["status"] == "cancelled"
        # free the worker; the next task runs after the cancelled one would have
        assert busy.cancel_remote() is True
        assert executor.submit(square, 3).result(timeout=60) == 9
        assert not marker.exists()
        assert client.get_task(waiting.task_id)["status"] == "cancelled"


def test_cancelling_a_running_task_stops_its_worker(fabric: Fabric, tmp_path: Path) -> None:
    endpoint = fabric.start_endpoint(**ONE_WORKER)
    pid_file = tmp_path / "running.pid"
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        running, pid = _busy_worker(executor, pid_file)
        assert running.cancel_remote() is True
        with pytest.raises(TaskCancelled):
            running.result(timeout=30)
        # the default grace period is 10 s; SIGTERM ends a worker at once
        wait_until(lambda: _gone(pid), timeout_s=10, what=f"worker {pid} gone")
        next_pid = executor.submit(os.getpid).result(timeout=60)
        assert next_pid != pid  # a fresh worker
        assert _pids(pid_file) == [pid]  # not retried: its death was no crash
        info = client.get_task(running.task_id)
        assert info["status"] == "cancelled" and info["error"]["code"] == "TASK_CANCELLED"


def test_a_task_ignoring_sigterm_is_killed_after_the_grace_period(fabric: Fabric, tmp_path: Path) -> None:
    endpoint = fabric.start_endpoint(**ONE_WORKER, cancel_grace_period_s=1.0)
    pid_file = tmp_path / "stubborn.pid"
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        stubborn, pid = _busy_worker(executor, pid_file, hold_ignoring_sigterm)
        assert stubborn.cancel_remote() is True
        wait_until(lambda: _gone(pid), timeout_s=30, what=f"worker {pid} SIGKILLed")
        with pytest.raises(TaskCancelled):
            stubborn.result(timeout=30)
        assert executor.submit(os.getpid).result(timeout=60) != pid
        assert _pids(pid_file) == [pid]


def test_cancel_on_an_offline_endpoint(fabric: Fabric, tmp_path: Path) -> None:
    name = f"cancel-offline-{uuid.uuid4().hex[:6]}"
    endpoint = fabric.start_endpoint(name, **ONE_WORKER)
    fabric.stop_endpoint(name)
    marker = tmp_path / "ran"
    with fabric.client() as client:
        wait_until(lambda: client.get_endpoint_status(endpoint)["status"] != "online", timeout_s=30, what="offline")
        mark_id = client.register_function(mark)
        task_id = client.run(str(marker), endpoint_id=endpoint, function_id=mark_id)
        assert client.cancel([task_id]) == {task_id: True}
        fabric.start_endpoint(name)
        after = client.run(4, endpoint_id=endpoint, function_id=client.register_function(square))
        wait_until(lambda: client.get_task(after)["status"] == "success", timeout_s=60, what="a later task's result")
        assert not marker.exists()
        assert client.get_task(task_id)["status"] == "cancelled"


def test_cancelling_a_finished_task_changes_nothing(fabric: Fabric) -> None:
    endpoint = fabric.start_endpoint()
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit(square, 5)
        assert future.result(timeout=60) == 25
        before = client.get_task(future.task_id)
        assert future.cancel_remote() is False
        assert client.cancel([future.task_id]) == {future.task_id: False}
        assert client.get_task(future.task_id) == before
        assert future.result() == 25


def test_another_user_cannot_cancel_my_task(fabric: Fabric, tmp_path: Path) -> None:
    endpoint = fabric.start_endpoint()
    _name, other_token = fabric.new_user()
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit(time.sleep, 2)
        wait_until(lambda: future.task_id is not None, what="accepted")
        with fabric.client(other_token) as other:
            assert other.cancel([future.task_id]) == {future.task_id: False}
        assert future.result(timeout=60) is None
        assert client.get_task(future.task_id)["status"] == "success"


def test_stdlib_cancel_only_before_sending(fabric: Fabric) -> None:
    endpoint = fabric.start_endpoint()
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        future = executor.submit(square, 6)
        assert future.result(timeout=60) == 36
        assert future.cancel() is False  # sent (and done): the standard meaning
        assert not future.cancelled()


def test_the_results_stream_carries_the_cancel(fabric: Fabric, tmp_path: Path) -> None:
    """Another process waiting on the task (attach) hears the cancelled outcome from the stream."""
    endpoint = fabric.start_endpoint(**ONE_WORKER)
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        running, _pid = _busy_worker(executor, tmp_path / "attached.pid")
        with Executor(endpoint, client=client) as watcher:
            (attached,) = watcher.attach([running.task_id])
            assert client.cancel([running.task_id]) == {running.task_id: True}
            with pytest.raises(TaskCancelled):
                attached.result(timeout=30)


def test_the_cancel_command(fabric: Fabric, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from taskfabric.cli import main
    from taskfabric.exit_codes import RET_ERROR

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    assert run("login", "--url", fabric.url, "--token", fabric.token).exit_code == 0
    endpoint = fabric.start_endpoint(**ONE_WORKER)
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        running, _pid = _busy_worker(executor, tmp_path / "cli.pid")
        unknown = str(uuid.uuid4())
        cancelled = run("task", "cancel", str(running.task_id), unknown, "--json")
        assert cancelled.exit_code == 0, cancelled.output
        assert json.loads(cancelled.output) == {str(running.task_id): True, unknown: False}
        with pytest.raises(TaskCancelled):
            running.result(timeout=30)
        again = run("task", "cancel", str(running.task_id))
        assert again.exit_code == RET_ERROR  # nothing was cancelled
        assert "not cancelled" in again.output
        assert run("task", "cancel", "not-a-task-id").exit_code != 0
