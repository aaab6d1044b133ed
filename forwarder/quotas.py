"""Per-user quotas and rate limits: the decisions, apart from HTTP and SQL.

Each check raises `QuotaExceeded` (429, `Retry-After`, a message naming the quota's settings key
and its value) before anything is recorded; a quota set to 0 is off. What each one costs:

- `quotas.submit_requests_per_s` / `submit_burst`: a token bucket per user, in memory, per forwarder
  replica (N replicas admit up to N times the rate). Checked after authentication, so it costs an
  unauthenticated caller nothing and another tenant nothing; buckets that refilled are forgotten,
  so memory is bounded by the users active in the last `burst / rate` seconds.
- `quotas.max_pending_tasks_per_user`: the user's unfinished tasks (one indexed count per submit)
  plus the batch must stay within it. Concurrent submits of one user may overshoot by at most the
  batches in flight (the count is read, not locked): a bound, not an exact ledger.
- `quotas.max_endpoints_per_user`: counted when a new endpoint is created (re-registering one is
  free). Each endpoint costs the broker a user, two quorum queues and a forwarder consumer channel.
- `quotas.max_result_bytes_per_day`: result bytes the ingest stored for the user this UTC day; past
  it, that user's submits answer 429 until midnight UTC (results already running still land).

The two store-backed counts are read at most once a second per user while they leave room
(`QuotaReads`): a submit that the last read (plus what this replica accepted since) clearly lets
through does not wait for the store, and every refusal comes from a fresh read. The bound above
grows by what other replicas accept, and the results stored, in that second.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable

from taskfabric.errors import QuotaExceeded
from taskfabric.forwarder.settings import QuotaSettings

__all__ = [
    "QUOTA_READ_FRESH_S",
    "SECONDS_PER_DAY",
    "QuotaReads",
    "SubmitRateLimiter",
    "check_endpoint_count",
    "check_pending_tasks",
    "check_result_bytes",
    "utc_day",
]

SECONDS_PER_DAY = 86400
#: how long a client is told to wait when a count (not a rate) is full: it drains as tasks finish
_PENDING_RETRY_AFTER_S = 30.0
#: an endpoint slot frees only when the user deletes one: a long wait, still a finite one
_ENDPOINTS_RETRY_AFTER_S = 3600.0
#: sweep forgotten buckets once the table holds this many
_SWEEP_AT_BUCKETS = 10_000
#: how long a store read of a user's counts may stand in for a new one (while it leaves room)
QUOTA_READ_FRESH_S = 1.0
#: users whose last counts are remembered (the oldest are forgotten first)
_REMEMBERED_USERS = 10_000


def utc_day(now: float) -> int:
    """Days since the epoch, UTC: the key of the daily result-bytes count."""
    return int(now // SECONDS_PER_DAY)


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class SubmitRateLimiter:
    """A token bucket per user: `rate_per_s` requests a second, `burst` at once. Thread-safe."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[uuid.UUID, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, user_id: uuid.UUID) -> None:
        """Spend one token of the user's bucket, or raise `QuotaExceeded` saying when one is due."""
        if self._rate <= 0:
            return
        with self._lock:
            now = self._clock()
            bucket = self._refilled(user_id, now)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait_s = (1.0 - bucket.tokens) / self._rate
        raise QuotaExceeded(
            f"too many submit requests: the limit is {self._rate:g} per second with bursts of "
            f"{int(self._burst)} (quotas.submit_requests_per_s); retry in {wait_s:.2f} s",
            quota="submit_requests_per_s",
            limit=self._rate,
            retry_after_s=wait_s,
        )

    def _refilled(self, user_id: uuid.UUID, now: float) -> _Bucket:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= _SWEEP_AT_BUCKETS:
                self._sweep(now)
            bucket = self._buckets[user_id] = _Bucket(self._burst, now)
            return bucket
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated_at) * self._rate)
        bucket.updated_at = now
        return bucket

    def _sweep(self, now: float) -> None:
        """Forget buckets that have refilled: a full bucket is the same as none."""
        full_after_s = self._burst / self._rate
        self._buckets = {user: b for user, b in self._buckets.items() if now - b.updated_at < full_after_s}

    def __len__(self) -> int:
        return len(self._buckets)


def check_pending_tasks(quotas: QuotaSettings, *, pending: int, adding: int) -> None:
    """Refuse a batch that would take the user past `max_pending_tasks_per_user`."""
    limit = quotas.max_pending_tasks_per_user
    if limit and pending + adding > limit:
        raise QuotaExceeded(
            f"too many unfinished tasks: you have {pending} and this batch adds {adding}, above the limit of "
            f"{limit} (quotas.max_pending_tasks_per_user); retry when some have finished",
            quota="max_pending_tasks_per_user",
            limit=limit,
            retry_after_s=_PENDING_RETRY_AFTER_S,
        )


def check_endpoint_count(quotas: QuotaSettings, *, owned: int) -> None:
    """Refuse a new endpoint beyond `max_endpoints_per_user`."""
    limit = quotas.max_endpoints_per_user
    if limit and owned >= limit:
        raise QuotaExceeded(
            f"too many endpoints: you have {owned}, the limit is {limit} (quotas.max_endpoints_per_user); "
            "delete one first, or re-register an existing one by its name",
            quota="max_endpoints_per_user",
            limit=limit,
            retry_after_s=_ENDPOINTS_RETRY_AFTER_S,
        )


def check_result_bytes(quotas: QuotaSettings, *, used: int, now: float) -> None:
    """Refuse submits once today's stored result bytes reach `max_result_bytes_per_day`."""
    limit = quotas.max_result_bytes_per_day
    if limit and used >= limit:
        until_midnight_s = (utc_day(now) + 1) * SECONDS_PER_DAY - now
        raise QuotaExceeded(
            f"too many result bytes today: {used} stored for you since midnight UTC, the limit is {limit} "
            "(quotas.max_result_bytes_per_day); new tasks are accepted again after midnight UTC",
            quota="max_result_bytes_per_day",
            limit=limit,
            retry_after_s=until_midnight_s,
        )


@dataclasses.dataclass(slots=True)
class _Counts:
    pending: int
    result_bytes: int
    day: int
    read_at: float


class QuotaReads:
    """The last store read of each user's unfinished tasks and today's result bytes, so that a
    submit far from both limits does not wait for two store reads (thread-safe).

    `passes` answers True only while the last read is at most `fresh_s` old, is of the same UTC
    day, and leaves room for the batch counting what this replica accepted since (`accepted`);
    otherwise the caller reads the store, checks exactly, and records the counts (`record`)."""

    def __init__(self, *, fresh_s: float = QUOTA_READ_FRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._fresh_s = fresh_s
        self._clock = clock
        self._counts: dict[uuid.UUID, _Counts] = {}
        self._lock = threading.Lock()

    def passes(self, quotas: QuotaSettings, user_id: uuid.UUID, *, adding: int, day: int) -> bool:
        with self._lock:
            counts = self._counts.get(user_id)
            if counts is None or counts.day != day or self._clock() - counts.read_at > self._fresh_s:
                return False
            pending_limit, bytes_limit = quotas.max_pending_tasks_per_user, quotas.max_result_bytes_per_day
            if pending_limit and counts.pending + adding > pending_limit:
                return False
            return not (bytes_limit and counts.result_bytes >= bytes_limit)

    def record(self, user_id: uuid.UUID, *, pending: int, result_bytes: int, day: int) -> None:
        """Counts just read from the store (before this submit's tasks are added)."""
        with self._lock:
            if user_id not in self._counts and len(self._counts) >= _REMEMBERED_USERS:
                del self._counts[next(iter(self._counts))]
            self._counts[user_id] = _Counts(pending, result_bytes, day, self._clock())

    def accepted(self, user_id: uuid.UUID, count: int) -> None:
        """This replica stored `count` new tasks of the user."""
        with self._lock:
            counts = self._counts.get(user_id)
            if counts is not None:
                counts.pending += count
