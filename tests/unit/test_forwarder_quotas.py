"""Per-user quota decisions, the ingest's result limits and its fair queue: domain logic, no I/O."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import pytest

from taskfabric.errors import ErrorCode, QuotaExceeded
from taskfabric.forwarder.fair_queue import FairQueue
from taskfabric.forwarder.http_errors import _service_error
from taskfabric.forwarder.ingest import GroupSizer
from taskfabric.forwarder.quotas import (
    SECONDS_PER_DAY,
    QuotaReads,
    SubmitRateLimiter,
    check_endpoint_count,
    check_pending_tasks,
    check_result_bytes,
)
from taskfabric.forwarder.result_limits import ResultLimits
from taskfabric.forwarder.settings import QuotaSettings
from taskfabric.protocol import Result, TaskError


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the submit rate ------------------------------------------------------------------------


def test_the_rate_limiter_allows_a_burst_then_refuses_naming_the_quota_and_when_to_retry() -> None:
    clock = _Clock()
    limiter = SubmitRateLimiter(2.0, 3, clock=clock)
    user = uuid.uuid4()
    for _ in range(3):
        limiter.take(user)
    with pytest.raises(QuotaExceeded) as caught:
        limiter.take(user)
    assert caught.value.status == 429
    assert caught.value.quota == "submit_requests_per_s"
    assert caught.value.limit == 2.0
    assert caught.value.retry_after_s == pytest.approx(0.5)
    assert "quotas.submit_requests_per_s" in str(caught.value) and "2 per second" in str(caught.value)


def test_the_rate_limiter_refills_at_its_rate_and_users_do_not_share_a_bucket() -> None:
    clock = _Clock()
    limiter = SubmitRateLimiter(2.0, 1, clock=clock)
    greedy, other = uuid.uuid4(), uuid.uuid4()
    limiter.take(greedy)
    with pytest.raises(QuotaExceeded):
        limiter.take(greedy)
    limiter.take(other)  # another tenant is unaffected
    clock.now += 0.5
    limiter.take(greedy)  # one token back after 1 / rate seconds


def test_a_rate_of_zero_is_no_limit() -> None:
    limiter = SubmitRateLimiter(0.0, 1, clock=_Clock())
    user = uuid.uuid4()
    for _ in range(1000):
        limiter.take(user)


def test_refilled_buckets_are_forgotten_so_many_users_cost_bounded_memory() -> None:
    clock = _Clock()
    limiter = SubmitRateLimiter(10.0, 1, clock=clock)
    for _ in range(10_000):
        limiter.take(uuid.uuid4())
    clock.now += 1.0  # every bucket has refilled
    limiter.take(uuid.uuid4())
    assert len(limiter) == 1


# --- counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "adding", "refused"), [(0, 10, False), (5, 5, False), (5, 6, True), (10, 1, True), (0, 11, True)]
)
def test_pending_tasks_quota(pending: int, adding: int, refused: bool) -> None:
    quotas = QuotaSettings(max_pending_tasks_per_user=10)
    if not refused:
        check_pending_tasks(quotas, pending=pending, adding=adding)
        return
    with pytest.raises(QuotaExceeded) as caught:
        check_pending_tasks(quotas, pending=pending, adding=adding)
    assert caught.value.quota == "max_pending_tasks_per_user" and caught.value.limit == 10
    assert "limit of 10 (quotas.max_pending_tasks_per_user)" in str(caught.value)
    assert caught.value.retry_after_s > 0


@pytest.mark.parametrize(("owned", "refused"), [(0, False), (2, False), (3, True), (4, True)])
def test_endpoints_quota(owned: int, refused: bool) -> None:
    quotas = QuotaSettings(max_endpoints_per_user=3)
    if not refused:
        check_endpoint_count(quotas, owned=owned)
        return
    with pytest.raises(QuotaExceeded, match=r"limit is 3 \(quotas.max_endpoints_per_user\)"):
        check_endpoint_count(quotas, owned=owned)


def test_result_bytes_quota_says_to_come_back_at_midnight_utc() -> None:
    quotas = QuotaSettings(max_result_bytes_per_day=1000)
    check_result_bytes(quotas, used=999, now=0.0)
    now = 5 * SECONDS_PER_DAY + 3600.0  # 01:00 UTC
    with pytest.raises(QuotaExceeded) as caught:
        check_result_bytes(quotas, used=1000, now=now)
    assert caught.value.quota == "max_result_bytes_per_day" and caught.value.limit == 1000
    assert caught.value.retry_after_s == pytest.approx(23 * 3600.0)


def test_zero_switches_the_count_quotas_off() -> None:
    quotas = QuotaSettings(max_pending_tasks_per_user=0, max_endpoints_per_user=0, max_result_bytes_per_day=0)
    check_pending_tasks(quotas, pending=10**9, adding=10**6)
    check_endpoint_count(quotas, owned=10**6)
    check_result_bytes(quotas, used=10**15, now=0.0)


# --- result limits --------------------------------------------------------------------------


def _ok(size: int) -> Result:
    return Result(task_id=uuid.uuid4(), ok=True, value=b"x" * size, worker_python="3.11.9", attempts=2)


def test_an_oversized_result_becomes_result_too_large_and_the_others_pass_untouched() -> None:
    limits = ResultLimits(max_result_bytes=100, max_results_per_message=10)
    small, big, exact = _ok(10), _ok(101), _ok(100)
    screened = limits.screen([small, big, exact])
    assert screened[0] is small and screened[2] is exact
    refused = screened[1]
    assert refused.task_id == big.task_id and not refused.ok and refused.value is None
    assert refused.error is not None and refused.error.code == ErrorCode.RESULT_TOO_LARGE.value
    assert "101 bytes" in refused.error.message and "quotas.max_result_bytes" in refused.error.message
    assert (refused.worker_python, refused.attempts) == ("3.11.9", 2)


def test_an_oversized_pickled_exception_is_refused_too() -> None:
    limits = ResultLimits(max_result_bytes=100, max_results_per_message=10)
    failed = Result(
        task_id=uuid.uuid4(), ok=False, error=TaskError(code="TASK_FAILED", message="m", exception=b"e" * 500)
    )
    [screened] = limits.screen([failed])
    assert screened.error is not None and screened.error.code == ErrorCode.RESULT_TOO_LARGE.value
    assert screened.error.exception is None


def test_a_message_with_too_many_results_is_refused_with_a_typed_outcome_for_each_task() -> None:
    limits = ResultLimits(max_result_bytes=100, max_results_per_message=3)
    results = [_ok(1) for _ in range(4)]
    screened = limits.screen(results)
    assert [result.task_id for result in screened] == [result.task_id for result in results]
    for result in screened:
        assert result.error is not None and result.error.code == ErrorCode.RESULT_TOO_LARGE.value
        assert "4 results" in result.error.message and "quotas.max_results_per_message" in result.error.message
    assert limits.screen(results[:3]) == results[:3]


# --- fair queue -----------------------------------------------------------------------------


def test_the_fair_queue_takes_sources_in_turns_so_a_flood_does_not_go_first() -> None:
    queue: FairQueue[str] = FairQueue()
    for index in range(100):
        queue.put("flood", f"a{index}")
    queue.put("quiet", "b0")
    group = queue.take_group(max_items=4, max_weight=1000, timeout_s=0)
    assert group == ["a0", "b0"], "while others wait, a group is one round"
    alone = queue.take_group(max_items=4, max_weight=1000, timeout_s=0)
    assert alone == ["a1", "a2", "a3", "a4"], "a source alone fills the group"


def test_the_fair_queue_bounds_a_group_by_weight_but_always_takes_one() -> None:
    queue: FairQueue[int] = FairQueue(weight=lambda item: item)
    queue.put("a", 5000)
    queue.put("a", 10)
    assert queue.take_group(max_items=64, max_weight=100, timeout_s=0) == [5000]
    assert queue.take_group(max_items=64, max_weight=100, timeout_s=0) == [10]
    assert len(queue) == 0


def test_the_next_group_starts_with_another_source() -> None:
    queue: FairQueue[str] = FairQueue()
    for index in range(10):
        queue.put("a", f"a{index}")
        queue.put("b", f"b{index}")
    for source in "abc":
        queue.put(source, f"{source}9")
    first = queue.take_group(max_items=2, max_weight=1000, timeout_s=0)
    second = queue.take_group(max_items=2, max_weight=1000, timeout_s=0)
    assert first == ["a0", "b0"] and second[0] != "a1", (first, second)


def test_the_fair_queue_times_out_empty_and_close_wakes_a_waiting_taker() -> None:
    queue: FairQueue[str] = FairQueue()
    assert queue.take_group(max_items=1, max_weight=1, timeout_s=0.01) == []
    taken: list[list[str]] = []
    taker = threading.Thread(target=lambda: taken.append(queue.take_group(max_items=1, max_weight=1, timeout_s=30)))
    taker.start()
    queue.close()
    taker.join(5)
    assert not taker.is_alive() and taken == [[]]


# --- ingest transaction size -------------------------------------------------------------------


def test_the_group_size_follows_the_stores_speed_within_its_bounds() -> None:
    sizer = GroupSizer(max_results=4096, target_s=0.05)
    assert sizer.results == 4096  # nothing measured yet
    sizer.observe(1000, 1.0)  # 1 ms per result: 50 fit in the target, but never fewer than the minimum
    assert sizer.results == 64
    for _ in range(30):
        sizer.observe(1000, 0.01)  # 10 us per result: 5,000 would fit, the cap holds
    assert sizer.results == 4096
    for _ in range(30):
        sizer.observe(1000, 0.05)  # 50 us per result
    assert 990 <= sizer.results <= 1010


# --- the HTTP answer ------------------------------------------------------------------------


@pytest.mark.parametrize(("wait_s", "header"), [(0.02, "1"), (1.0, "1"), (1.2, "2"), (86399.5, "86400")])
def test_a_refusal_is_429_with_retry_after_in_whole_seconds_rounded_up_and_the_quota_named(
    wait_s: float, header: str
) -> None:
    refusal = QuotaExceeded("too many", quota="submit_requests_per_s", limit=5.0, retry_after_s=wait_s)
    response = asyncio.run(_service_error(None, refusal))  # type: ignore[arg-type]
    assert response.status_code == 429
    assert response.headers["Retry-After"] == header
    assert json.loads(response.body)["error"] == {
        "code": "QUOTA_EXCEEDED",
        "message": "too many",
        "quota": "submit_requests_per_s",
        "limit": 5.0,
    }


def test_the_group_size_for_a_shorter_target_scales_with_the_stores_speed() -> None:
    sizer = GroupSizer(max_results=4096, target_s=0.05)
    assert sizer.results_for(0.01) == 4096  # nothing measured yet: the cap
    for _ in range(30):
        sizer.observe(1000, 0.05)  # 50 us per result
    assert 990 <= sizer.results <= 1010
    assert 195 <= sizer.results_for(0.01) <= 205
    assert sizer.results_for(0.0001) == 64  # never below the minimum


def test_sources_count_as_active_for_a_window_after_their_last_item() -> None:
    now = [100.0]
    queue: FairQueue[str] = FairQueue(clock=lambda: now[0])
    assert queue.active_sources(5.0) == 0
    queue.put("flood", "a1")
    queue.put("flood", "a2")
    assert queue.active_sources(5.0) == 1
    now[0] = 103.0
    queue.put("quiet", "b1")
    assert queue.active_sources(5.0) == 2
    queue.take_group(max_items=10, max_weight=10, timeout_s=0)  # taking items does not end activity
    assert queue.active_sources(5.0) == 2
    now[0] = 106.0  # the flood's last item is 6 s old, the quiet one's 3 s
    assert queue.active_sources(5.0) == 1
    now[0] = 109.0
    assert queue.active_sources(5.0) == 0


def test_the_ingest_takes_short_transactions_while_several_endpoints_send() -> None:
    from taskfabric.forwarder.ingest import Ingestor

    ingestor = Ingestor(
        None,  # type: ignore[arg-type]  # group sizing touches neither store nor broker
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        forwarder_username="forwarder",
        on_finished=lambda finished: None,
        group_results=4096,
        transaction_s=0.05,
        contended_transaction_s=0.01,
    )
    for _ in range(30):
        ingestor._sizer.observe(1000, 0.05)  # 50 us per result
    ingestor._queue.put("flood", "x")  # type: ignore[arg-type]
    alone = ingestor.group_results()
    ingestor._queue.put("quiet", "y")  # type: ignore[arg-type]
    contended = ingestor.group_results()
    assert 990 <= alone <= 1010 and 195 <= contended <= 205


# --- the store-backed counts, read at most once a second while they leave room ----------------


def test_quota_reads_pass_only_a_fresh_read_of_the_same_day_with_room() -> None:
    clock, alice, bob = _Clock(), uuid.uuid4(), uuid.uuid4()
    quotas = QuotaSettings(max_pending_tasks_per_user=10, max_result_bytes_per_day=1000)
    reads = QuotaReads(fresh_s=1.0, clock=clock)
    assert not reads.passes(quotas, alice, adding=1, day=5), "nothing read yet"
    reads.record(alice, pending=4, result_bytes=999, day=5)
    assert reads.passes(quotas, alice, adding=6, day=5)
    assert not reads.passes(quotas, alice, adding=7, day=5), "no room: the caller must read the store"
    assert not reads.passes(quotas, bob, adding=1, day=5), "another user's read is not alice's"
    assert not reads.passes(quotas, alice, adding=1, day=6), "a new UTC day"
    clock.now += 1.01
    assert not reads.passes(quotas, alice, adding=1, day=5), "stale"


def test_quota_reads_count_what_this_replica_accepted_since_the_read() -> None:
    clock, alice = _Clock(), uuid.uuid4()
    quotas = QuotaSettings(max_pending_tasks_per_user=10, max_result_bytes_per_day=0)
    reads = QuotaReads(clock=clock)
    reads.record(alice, pending=0, result_bytes=0, day=1)
    reads.accepted(alice, 8)
    assert reads.passes(quotas, alice, adding=2, day=1)
    assert not reads.passes(quotas, alice, adding=3, day=1)


def test_quota_reads_never_pass_a_user_past_the_daily_result_bytes() -> None:
    clock, alice = _Clock(), uuid.uuid4()
    quotas = QuotaSettings(max_pending_tasks_per_user=0, max_result_bytes_per_day=1000)
    reads = QuotaReads(clock=clock)
    reads.record(alice, pending=0, result_bytes=1000, day=1)
    assert not reads.passes(quotas, alice, adding=1, day=1)
