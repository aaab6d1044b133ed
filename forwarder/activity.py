"""`GET /v1/activity`: what `taskfabric top` shows of the caller's own tasks, in one request.

Per endpoint, the caller's unfinished tasks (waiting, running) and the tasks that finished within
the last `window_s` seconds (completed, failed, cancelled): consecutive calls with `window_s` set
to the refresh interval give completion and failure rates. And the newest `failures` failed tasks
of the last `RECENT_FAILURES_S`. The window is measured on the forwarder's clock (`as_of`), so a
client's clock does not matter.

Access (DESIGN): any authenticated user, and only their own tasks (every store query is bound
to the caller's id); an endpoint appears because the caller has tasks on it, whoever owns it.
Cost (nothing before authentication; figures from benchmarks/activity_query.py): a range of the
completed_at index for the tasks finished fabric-wide within the window (at most `MAX_WINDOW_S`),
a walk of the caller's `ACTIVITY_SCAN_TASKS` newest tasks for the failures, and a count of the
caller's unfinished tasks, which walks all their tasks and is therefore reused for at least
`ACTIVITY_UNFINISHED_CACHE_S` and ten times as long as it took (`TaskService.activity`): a user
polling fast keeps a reader thread busy a tenth of the time at most, walking their own tasks.
Parameters arrive as text and are checked here, so a bad one is a 400 naming it.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from typing import Any

from taskfabric.forwarder.records import TaskActivity, TaskStatus
from taskfabric.forwarder.requests import invalid
from taskfabric.protocol.api import EndpointActivity, RecentFailure, render

__all__ = [
    "DEFAULT_FAILURES",
    "DEFAULT_WINDOW_S",
    "MAX_FAILURES",
    "MAX_WINDOW_S",
    "RECENT_FAILURES_S",
    "activity_body",
    "parse_failures",
    "parse_window_s",
]

DEFAULT_WINDOW_S = 60.0
#: an hour: the finished-task scan stays a bounded slice of the completed_at index
MAX_WINDOW_S = 3600.0
DEFAULT_FAILURES = 10
MAX_FAILURES = 100
#: failures older than this are not "recent" (and bound the scan that finds them)
RECENT_FAILURES_S = 3600.0


def parse_window_s(value: str | None) -> float:
    """`window_s`: seconds, more than 0 and at most `MAX_WINDOW_S` (default `DEFAULT_WINDOW_S`)."""
    if value is None or value == "":
        return DEFAULT_WINDOW_S
    try:
        window_s = float(value[:32])
    except ValueError:
        window_s = math.nan
    if not (math.isfinite(window_s) and 0 < window_s <= MAX_WINDOW_S):
        raise invalid(f"window_s: {value[:32]!r} is not a number of seconds above 0 and at most {MAX_WINDOW_S:g}")
    return window_s


def parse_failures(value: str | None) -> int:
    """`failures`: how many recent failures to list, 0 to `MAX_FAILURES` (default `DEFAULT_FAILURES`)."""
    if value is None or value == "":
        return DEFAULT_FAILURES
    if not (value.isascii() and value.isdecimal()) or len(value) > 4 or int(value) > MAX_FAILURES:
        raise invalid(f"failures: {value[:32]!r} is not a whole number from 0 to {MAX_FAILURES}")
    return int(value)


def activity_body(activity: TaskActivity, *, as_of: float, window_s: float) -> dict[str, Any]:
    """The answer of `GET /v1/activity` (schema `schemas.Activity`): endpoints in id order."""
    per_endpoint: dict[uuid.UUID, dict[TaskStatus, int]] = defaultdict(dict)
    for (endpoint_id, status), count in activity.counts.items():
        per_endpoint[endpoint_id][status] = count
    endpoints = [
        EndpointActivity(
            endpoint_id=endpoint_id,
            waiting=counts.get(TaskStatus.WAITING, 0),
            running=counts.get(TaskStatus.RUNNING, 0),
            completed=counts.get(TaskStatus.SUCCESS, 0),
            failed=counts.get(TaskStatus.FAILED, 0),
            cancelled=counts.get(TaskStatus.CANCELLED, 0),
        )
        for endpoint_id, counts in sorted(per_endpoint.items())
    ]
    failures = [
        RecentFailure(
            task_id=summary.task_id,
            endpoint_id=summary.endpoint_id,
            code=summary.error_code or "TASK_FAILED",
            completed_at=summary.completed_at if summary.completed_at is not None else as_of,
        )
        for summary in activity.failures
    ]
    return {
        "as_of": as_of,
        "window_s": window_s,
        "endpoints": [render(item) for item in endpoints],
        "recent_failures": [render(item) for item in failures],
    }
