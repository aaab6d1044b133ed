"""The endpoint supervisor's restart budget and back-off (the process side is in
tests/integration/test_endpoint_faults.py)."""

from __future__ import annotations

import signal
from pathlib import Path

from taskfabric.endpoint_agent.supervisor import RestartBudget, RestartPolicy, SupervisorState, exit_reason, read_state


def test_the_budget_allows_max_restarts_in_the_window_then_refuses() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=3, window_s=100.0))
    assert [budget.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert not budget.allow(50.0)
    assert budget.allow(100.5)  # the first restart left the window


def test_the_back_off_doubles_up_to_the_maximum() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=10, window_s=1000.0, backoff_initial_s=1.0, backoff_max_s=5.0))
    delays = []
    for t in range(5):
        assert budget.allow(float(t))
        delays.append(budget.delay_s())
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_exit_reasons_name_the_signal_or_status() -> None:
    assert exit_reason(-signal.SIGKILL) == "killed by signal 9 (SIGKILL)"
    assert exit_reason(1) == "exited with status 1"


def test_the_state_file_round_trips_and_is_empty_when_missing(tmp_path: Path) -> None:
    assert read_state(tmp_path) == {}
    SupervisorState(restarts=2, last_exit_reason="exited with status 1", last_exit_at=5.0).save(tmp_path)
    assert read_state(tmp_path) == {
        "restarts": 2,
        "last_exit_reason": "exited with status 1",
        "last_exit_at": 5.0,
        "gave_up": False,
    }
