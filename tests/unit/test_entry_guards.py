"""Every thread and process entry point of the endpoint side catches, logs, and exits with a named
code or keeps going (issue 12, item 8). The entry points, and what guards each:

=====================================  ==========================================================
``taskfabric agent run`` (process)     `run_agent`: `run_guarded` -> RET_CRASHED, traceback in
                                       agent.log; the supervisor restarts it
``taskfabric agent supervise``         `run_guarded` -> RET_CRASHED in agent.log
agent loop (main thread)               exceptions end `Agent.run` -> `run_agent`'s guard; a dead
                                       scaling thread stops it gracefully (`check_scaler`)
scaling thread (`Scaler._run`)         one failing step: logged, retried next period; anything
                                       else: logged, kept in `error` -> the agent stops
consumer watchdog (`_watch`)           every check caught and logged; `wrap_with_logs`
broker IO thread (transport)           `wrap_with_logs`; disconnects reconnect
``taskfabric manager run`` (process)   `run_manager`: `run_guarded` -> RET_CRASHED; the
                                       interchange loses it and retries its tasks
worker process (`worker.main`)         `run_guarded` -> RET_CRASHED; the manager replaces it
worker's result flusher (thread)       any error ends the worker (RET_CRASHED): replaced
=====================================  ==========================================================
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from taskfabric.endpoint_agent import scaler as scaler_module
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.launch import ManagerLaunch
from taskfabric.endpoint_agent.scaler import Scaler
from taskfabric.exit_codes import RET_CRASHED
from taskfabric.logs import run_guarded


def test_run_guarded_logs_the_traceback_once_and_returns_the_crash_code(caplog: pytest.LogCaptureFixture) -> None:
    def main() -> int:
        raise KeyError("boom")

    with caplog.at_level(logging.ERROR):
        assert run_guarded(main, what="the thing", crash_code=RET_CRASHED) == RET_CRASHED
    (record,) = caplog.records
    assert "the thing (pid" in record.getMessage() and "KeyError: 'boom'" in record.getMessage()
    assert record.exc_info is not None
    assert run_guarded(lambda: 0, what="fine", crash_code=RET_CRASHED) == 0


def _taskfabric(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], check=False, capture_output=True, text=True, timeout=60)


def test_a_manager_that_cannot_start_exits_with_the_crash_code_and_one_log_record(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    done = _taskfabric(
        "taskfabric", "manager", "run", "--interchange", "not an address", "--workers", "1", "--token-file", str(token)
    )
    assert done.returncode == RET_CRASHED, done.stderr
    assert "the manager (pid" in done.stderr and "failed on an unexpected error" in done.stderr
    assert done.stderr.count("Traceback") == 1  # logged once, by the guard


def test_a_worker_that_fails_outside_a_task_exits_with_the_crash_code(tmp_path: Path) -> None:
    done = _taskfabric(
        "taskfabric.manager.worker",
        *("--fd-in", "0", "--fd-out", "1", "--max-result-bytes", "1000"),
        *("--slot", str(tmp_path / "no-such-slot"), "--task-workdir", str(tmp_path / "work")),
    )
    assert done.returncode == RET_CRASHED, done.stderr
    assert "the worker (pid" in done.stderr and "FileNotFoundError" in done.stderr


def test_the_manager_refuses_a_worker_count_no_registration_could_carry() -> None:
    done = _taskfabric("taskfabric", "manager", "run", "--interchange", "tcp://127.0.0.1:1", "--workers", "5000")
    assert done.returncode == 2 and "--workers" in done.stderr and "Traceback" not in done.stderr


def test_a_scaling_thread_that_dies_says_so_and_wakes_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def exploding_provider(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the provider exploded")

    monkeypatch.setattr(scaler_module, "build_provider", exploding_provider)
    woken = threading.Event()
    launch = ManagerLaunch(
        interchange_address="tcp://127.0.0.1:1",
        workers=1,
        prefetch=0,
        heartbeat_period_s=1.0,
        heartbeat_threshold_s=3.0,
        max_result_bytes=1000,
        token_file=tmp_path / "token",
        log_root=tmp_path,
    )
    scaler = Scaler(
        EndpointConfig().block_config(), launch, tmp_path, wake=woken.set, backlog=lambda: 0, drain_grace_s=1.0
    )
    scaler.start()
    assert woken.wait(10)
    assert isinstance(scaler.failure(), RuntimeError)
    assert "the scaling thread stopped on an unexpected error" in caplog.text and "the provider exploded" in caplog.text
    scaler.stop()
