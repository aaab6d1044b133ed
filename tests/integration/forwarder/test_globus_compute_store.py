"""The store's part of the Globus-Compute-compatible API, on real SQLite and PostgreSQL: task groups
with a result queue, and finished task records that name their task group (what the ingest
relays results by)."""

from __future__ import annotations

import time
import uuid

from taskfabric.forwarder.records import NewTask
from taskfabric.forwarder.store import Failure, Store
from taskfabric.protocol import Result


def test_task_groups_belong_to_their_first_user(store: Store) -> None:
    alice, bob = (store.users.create(f"u-{uuid.uuid4().hex[:10]}").user_id for _ in range(2))
    group, other = uuid.uuid4(), uuid.uuid4()
    assert store.compute_groups.add(group, owner_id=alice, queue="q.alice", now=10.0) == alice
    assert store.compute_groups.add(group, owner_id=bob, queue="q.bob", now=11.0) == alice  # taken: nothing changes
    assert store.compute_groups.owner(group) == alice and store.compute_groups.owner(other) is None
    assert store.compute_groups.queues([group, other]) == {group: (alice, "q.alice")}
    assert store.compute_groups.delete_older_than(5.0) == 0
    assert store.compute_groups.delete_older_than(20.0) == 1
    assert store.compute_groups.queues([group]) == {}


def test_finished_records_name_their_task_group(store: Store) -> None:
    owner, endpoint, group = store.users.create(f"u-{uuid.uuid4().hex[:10]}").user_id, uuid.uuid4(), uuid.uuid4()
    new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(3)]
    store.tasks.insert(
        owner_id=owner,
        endpoint_id=endpoint,
        client_python="",
        new_tasks=new,
        created_at=time.time(),
        task_group_id=group,
    )
    ids = [task.task_id for task in new]
    done = store.tasks.store_results([(endpoint, [Result(task_id=ids[0], ok=True, value=b"v")])], now=1.0)
    assert [record.task_group_id for record in done] == [group]
    failed = store.tasks.fail(ids[1:2], Failure("DEAD_LETTERED", "dead"), now=2.0, endpoint_id=endpoint)
    assert [record.task_group_id for record in failed] == [group]
    gone = store.tasks.fail_endpoint(endpoint, Failure("ENDPOINT_DELETED", "deleted"), now=3.0)
    assert [record.task_group_id for record in gone] == [group]
