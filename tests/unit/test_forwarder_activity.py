"""`GET /v1/activity`'s parts that need no network: parameter checks, the answer's shape, and the
task service's reuse of a user's unfinished counts (at least 2 s, and ten times as long as
counting took), on an in-memory stand-in for the store and a clock the test moves."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from taskfabric.errors import InvalidRequest
from taskfabric.forwarder import tasks as tasks_module
from taskfabric.forwarder.activity import activity_body, parse_failures, parse_window_s
from taskfabric.forwarder.records import Identity, TaskActivity, TaskStatus, TaskSummary
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import StoreRunner
from taskfabric.forwarder.tasks import TaskService

ALICE = Identity(user_id=uuid.UUID(int=1), username="alice", auth="local")
BOB = Identity(user_id=uuid.UUID(int=2), username="bob", auth="local")
LAB = uuid.UUID(int=10)


def test_parameters_default_and_bounds() -> None:
    assert parse_window_s(None) == 60.0 and parse_window_s("0.5") == 0.5 and parse_window_s("3600") == 3600.0
    assert parse_failures(None) == 10 and parse_failures("0") == 0 and parse_failures("100") == 100
    for bad in ("0", "-1", "3600.5", "nan", "inf", "1e400", "x"):
        with pytest.raises(InvalidRequest, match=r"^window_s: "):
            parse_window_s(bad)
    for bad in ("101", "-1", "1.0", "99999", "٣"):
        with pytest.raises(InvalidRequest, match=r"^failures: "):
            parse_failures(bad)


def test_the_body_groups_counts_per_endpoint_and_renders_failures() -> None:
    failed = TaskSummary(
        task_id=uuid.UUID(int=5),
        status=TaskStatus.FAILED,
        endpoint_id=LAB,
        function_id=uuid.UUID(int=6),
        task_group_id=None,
        created_at=1.0,
        started_at=2.0,
        completed_at=3.0,
        error_code="WORKER_LOST",
    )
    counts = {(LAB, TaskStatus.WAITING): 4, (LAB, TaskStatus.FAILED): 1, (uuid.UUID(int=11), TaskStatus.RUNNING): 2}
    body = activity_body(TaskActivity(counts=counts, failures=[failed]), as_of=10.0, window_s=5.0)
    assert body == {
        "as_of": 10.0,
        "window_s": 5.0,
        "endpoints": [
            {"endpoint_id": str(LAB), "waiting": 4, "running": 0, "completed": 0, "failed": 1, "cancelled": 0},
            {
                "endpoint_id": str(uuid.UUID(int=11)),
                "waiting": 0,
                "running": 2,
                "completed": 0,
                "failed": 0,
                "cancelled": 0,
            },
        ],
        "recent_failures": [
            {"task_id": str(uuid.UUID(int=5)), "endpoint_id": str(LAB), "code": "WORKER_LOST", "completed_at": 3.0}
        ],
    }


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _Tasks:
    """The two store reads of the activity, in memory; each unfinished count 'takes' `cost_s`
    on the test's clock."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.cost_s = 0.0
        self.walks: list[uuid.UUID] = []
        self.waiting = 3

    def unfinished_counts(self, owner_id: uuid.UUID) -> dict[tuple[uuid.UUID, TaskStatus], int]:
        self.walks.append(owner_id)
        self.clock.now += self.cost_s
        return {(LAB, TaskStatus.WAITING): self.waiting}

    def activity(self, owner_id: uuid.UUID, **_: Any) -> TaskActivity:
        return TaskActivity(counts={(LAB, TaskStatus.SUCCESS): 1}, failures=[])


def test_unfinished_counts_are_reused_for_ten_times_their_cost_and_at_least_2_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(tasks_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    store = SimpleNamespace(tasks=_Tasks(clock))
    runner = StoreRunner(read_threads=1)
    service = TaskService(
        ForwarderSettings(),
        store=store,  # type: ignore[arg-type]
        runner=runner,
        broker=None,  # type: ignore[arg-type]
        endpoints=None,  # type: ignore[arg-type]
        cache=None,  # type: ignore[arg-type]
    )

    def waiting(identity: Identity = ALICE) -> int:
        activity = asyncio.run(service.activity(identity, since=0.0, failures=0, failures_since=0.0))
        assert activity.counts[LAB, TaskStatus.SUCCESS] == 1  # the finished counts are read every time
        return activity.counts[LAB, TaskStatus.WAITING]

    try:
        store.tasks.cost_s = 0.01  # cheap: reused for the 2 s floor
        assert waiting() == 3
        store.tasks.waiting = 7
        clock.now += 1.9
        assert waiting() == 3 and len(store.tasks.walks) == 1
        assert waiting(BOB) == 7  # another user's counts are their own
        clock.now += 0.2
        assert waiting() == 7 and len(store.tasks.walks) == 3

        store.tasks.cost_s = 0.5  # costly: reused for ten times 0.5 s
        clock.now += 2.1
        store.tasks.waiting = 9
        assert waiting() == 9
        store.tasks.waiting = 11
        clock.now += 4.9
        assert waiting() == 9
        clock.now += 0.2
        assert waiting() == 11
    finally:
        runner.close()
