"""The store's figures for /metrics on real SQLite and PostgreSQL: unfinished tasks per endpoint,
and the trivial query /readyz makes."""

from __future__ import annotations

import time
import uuid

from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.store import Failure, Store
from taskfabric.protocol import Result


def _submit(store: Store, owner: uuid.UUID, endpoint: uuid.UUID, count: int) -> list[uuid.UUID]:
    new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(count)]
    store.tasks.insert(
        owner_id=owner, endpoint_id=endpoint, client_python="3.11.7", new_tasks=new, created_at=time.time()
    )
    return [task.task_id for task in new]


def test_pending_counts_are_per_endpoint_and_leave_finished_tasks_out(store: Store) -> None:
    owner = store.users.create(f"u-{uuid.uuid4().hex[:10]}").user_id
    busy, other, idle = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = _submit(store, owner, busy, 6)
    theirs = _submit(store, owner, other, 2)
    done = _submit(store, owner, idle, 1)
    store.tasks.store_results([(busy, [Result(task_id=ids[0], ok=True, value=b"v")])], now=time.time())
    store.tasks.fail(ids[1:2], Failure("DEAD_LETTERED", "gone"), now=time.time())
    store.tasks.cancel(owner, ids[2:3], now=time.time())
    store.tasks.store_results([(idle, [Result(task_id=done[0], ok=True, value=b"v")])], now=time.time())
    counts = store.tasks.pending_counts()
    assert counts[busy, TaskStatus.WAITING] == 3
    assert counts[other, TaskStatus.WAITING] == len(theirs)
    assert not any(endpoint == idle for endpoint, _status in counts)
    assert all(status.pending for _endpoint, status in counts)


def test_ping_answers(store: Store) -> None:
    store.ping()
