"""Submission retries: which failures are retried, the back-off, and the time budget."""

from __future__ import annotations

import uuid

import httpx
import pytest

from taskfabric.client.http import _error_from
from taskfabric.client.retry import retry_transient
from taskfabric.errors import InvalidRequest, QuotaExceeded, ServiceError
from taskfabric.protocol.task_ids import submission_task_ids


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


def test_a_429_is_retried_after_its_retry_after_within_the_budget() -> None:
    clock = _Clock()
    refusal = QuotaExceeded("slow down", quota="submit_requests_per_s", limit=5, retry_after_s=2.0)
    send = _failing(refusal, refusal)
    assert retry_transient(send, budget_s=60, what="submit", sleep=clock.sleep, clock=clock) == "accepted"  # type: ignore[arg-type]
    assert len(clock.sleeps) == 2
    assert all(2.0 <= pause <= 2.4 for pause in clock.sleeps), clock.sleeps


def test_a_429_asking_for_longer_than_the_budget_is_raised_at_once() -> None:
    clock = _Clock()
    refusal = QuotaExceeded("daily", quota="max_result_bytes_per_day", limit=10, retry_after_s=3600.0)
    with pytest.raises(QuotaExceeded) as caught:
        retry_transient(_failing(refusal), budget_s=60, what="submit", sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    assert caught.value.quota == "max_result_bytes_per_day"
    assert clock.sleeps == []


def test_429s_stop_when_the_budget_is_spent() -> None:
    clock = _Clock()
    send = _failing(*[QuotaExceeded("slow", quota="submit_requests_per_s", retry_after_s=1.0)] * 1000)
    with pytest.raises(QuotaExceeded):
        retry_transient(send, budget_s=10, what="submit", sleep=clock.sleep, clock=clock)  # type: ignore[arg-type]
    assert sum(clock.sleeps) <= 10.0
    assert 5 <= len(clock.sleeps) <= 10


def test_the_client_reads_a_429_as_quota_exceeded_with_its_name_value_and_wait() -> None:
    body = {"error": {"code": "QUOTA_EXCEEDED", "message": "too many", "quota": "max_endpoints_per_user", "limit": 3}}
    response = httpx.Response(429, json=body, headers={"Retry-After": "7"})
    error = _error_from(response)
    assert isinstance(error, QuotaExceeded)
    assert (error.status, error.code, error.quota, error.limit, error.retry_after_s) == (
        429,
        "QUOTA_EXCEEDED",
        "max_endpoints_per_user",
        3.0,
        7.0,
    )
    assert "too many" in str(error)


@pytest.mark.parametrize("header", [None, "Wed, 21 Oct 2015 07:28:00 GMT", "-5"])
def test_a_429_without_a_usable_retry_after_gets_a_short_finite_wait(header: str | None) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    error = _error_from(
        httpx.Response(429, json={"error": {"code": "QUOTA_EXCEEDED", "message": "x"}}, headers=headers)
    )
    assert isinstance(error, QuotaExceeded)
    assert 0.0 <= error.retry_after_s <= 1.0
