"""Submission retries: which failures are retried, the back-off, and the time budget."""

from __future__ import annotations

import uuid

import pytest

from taskfabric.client.retry import retry_transient
from taskfabric.errors import InvalidRequest, ServiceError
from taskfabric.forwarder.tasks import submission_task_ids


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _failing(*errors: Exception) -> object:
    remaining = list(errors)

    def send() -> str:
        if remaining:
            raise remaining.pop(0)
        return "accepted"

    return send


@pytest.mark.parametrize("status", [0, 502, 503, 504])
def test_transient_failures_are_retried_until_they_pass(status: int) -> None:
    clock = _Clock()
    send = _failing(*[ServiceError("down", status=status, code="X")] * 3)
    assert retry_transient(send, budget_s=60, what="submit", sleep=clock.sleep, clock=clock) == "accepted"  # type: ignore[arg-type]
    assert len(clock.sleeps) == 3
    assert all(0 < pause <= 5.0 for pause in clock.sleeps)


@pytest.mark.parametrize(
    "error", [InvalidRequest("bad", status=400, code="X"), ServiceError("x", status=409, code="X")]
)
def test_final_answers_are_not_retried(error: ServiceError) -> None:
    clock = _Clock()
    with pytest.raises(type(error)):
        retry_transient(_failing(error), budget_s=60, what="submit", sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    assert clock.sleeps == []


def test_the_budget_bounds_the_retries() -> None:
    clock = _Clock()
    send = _failing(*[ServiceError("down", status=503, code="X")] * 1000)
    with pytest.raises(ServiceError):
        retry_transient(send, budget_s=10, what="submit", sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    assert sum(clock.sleeps) <= 10.0 + 1e-9
    assert 3 <= len(clock.sleeps) < 30  # exponential, capped: not a tight loop


def test_no_budget_means_one_try() -> None:
    clock = _Clock()
    with pytest.raises(ServiceError):
        retry_transient(
            _failing(ServiceError("down", status=503, code="X")), budget_s=0, what="s", sleep=clock.sleep, clock=clock
        )  # type: ignore[arg-type]
    assert clock.sleeps == []


def test_submission_task_ids_name_one_request() -> None:
    alice, bob, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = submission_task_ids(alice, key, 5)
    assert ids == submission_task_ids(alice, key, 5) and len(set(ids)) == 5
    assert not set(ids) & set(submission_task_ids(bob, key, 5))
    assert not set(ids) & set(submission_task_ids(alice, key, 4))
    assert not set(ids) & set(submission_task_ids(alice, uuid.uuid4(), 5))
