"""The counts behind per-user quotas on real SQLite and PostgreSQL: a user's unfinished tasks,
their endpoints, result bytes per day (an upsert that adds), pruning, and the v3 migration run
again (other branches' v3 migrations may come first: it must be idempotent)."""

from __future__ import annotations

import time
import uuid

from taskfabric.forwarder.records import EndpointRecord, NewTask
from taskfabric.forwarder.store import Failure, Store
from taskfabric.forwarder.store.schema import _v4_quotas
from taskfabric.protocol import Result


def _owner(store: Store) -> uuid.UUID:
    return store.users.create(f"q-{uuid.uuid4().hex[:10]}").user_id


def _submit(store: Store, owner: uuid.UUID, count: int) -> list[uuid.UUID]:
    new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(count)]
    store.tasks.insert(
        owner_id=owner, endpoint_id=uuid.uuid4(), client_python="3.11.7", new_tasks=new, created_at=time.time()
    )
    return [task.task_id for task in new]


def test_pending_tasks_count_the_owners_unfinished_tasks_only(store: Store) -> None:
    owner, other = _owner(store), _owner(store)
    ids = _submit(store, owner, 5)
    _submit(store, other, 3)
    head = store.tasks.get_many(ids[:1])[ids[0]]
    store.tasks.store_results([(head.endpoint_id, [Result(task_id=ids[0], ok=True, value=b"v")])], now=time.time())
    store.tasks.fail(ids[1:2], Failure("DEAD_LETTERED", "gone"), now=time.time())
    store.tasks.cancel(owner, ids[2:3], now=time.time())
    assert store.quotas.pending_tasks(owner) == 2
    assert store.quotas.pending_tasks(other) == 3
    assert store.quotas.pending_tasks(uuid.uuid4()) == 0


def test_endpoints_count_the_owners_endpoints(store: Store) -> None:
    owner = _owner(store)
    for index in range(3):
        endpoint_id = uuid.uuid4()
        store.endpoints.add(
            EndpointRecord(
                endpoint_id=endpoint_id,
                owner_id=owner,
                name=f"ep{index}",
                queue_secret="5e" * 8,
                broker_username=f"ep-{endpoint_id}",
                created_at=time.time(),
                metadata="{}",
            )
        )
    assert store.quotas.endpoints(owner) == 3
    assert store.quotas.endpoints(_owner(store)) == 0


def test_result_bytes_add_up_per_owner_and_day_and_old_days_are_pruned(store: Store) -> None:
    alice, bob = _owner(store), _owner(store)
    store.quotas.add_result_bytes({alice: 100, bob: 7}, day=20000)
    store.quotas.add_result_bytes({alice: 50, bob: 0}, day=20000)
    store.quotas.add_result_bytes({alice: 1}, day=20001)
    assert store.quotas.result_bytes(alice, 20000) == 150
    assert store.quotas.result_bytes(bob, 20000) == 7
    assert store.quotas.result_bytes(alice, 20001) == 1
    assert store.quotas.result_bytes(alice, 19999) == 0
    assert store.quotas.prune_result_bytes(20001) >= 2
    assert store.quotas.result_bytes(alice, 20000) == 0 and store.quotas.result_bytes(alice, 20001) == 1


def test_the_v4_quotas_migration_can_run_again(store: Store) -> None:
    with store.engine.begin() as connection:
        _v4_quotas(connection)
        _v4_quotas(connection)
    store.quotas.add_result_bytes({_owner(store): 1}, day=1)
