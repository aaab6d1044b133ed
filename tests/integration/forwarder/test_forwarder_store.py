"""The store on real SQLite and PostgreSQL: batch writes, idempotent results, ownership guards."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import event

from taskfabric.errors import StoreError
from taskfabric.forwarder.records import EndpointRecord, NewTask, StatusReport, TaskStatus
from taskfabric.forwarder.store import Failure, Store, StoreConflict
from taskfabric.protocol import Result, TaskError


def _user(store: Store) -> uuid.UUID:
    return store.users.create(f"u-{uuid.uuid4().hex[:10]}").user_id


def _submit(store: Store, owner: uuid.UUID, endpoint: uuid.UUID, count: int) -> list[uuid.UUID]:
    new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(count)]
    store.tasks.insert(
        owner_id=owner, endpoint_id=endpoint, client_python="3.11.7", new_tasks=new, created_at=time.time()
    )
    return [task.task_id for task in new]


def _ok(task_id: uuid.UUID, value: bytes = b"v") -> Result:
    return Result(task_id=task_id, ok=True, value=value, worker_python="3.11.9", attempts=1)


def test_results_are_stored_once_first_outcome_wins(store: Store) -> None:
    owner, endpoint = _user(store), uuid.uuid4()
    ids = _submit(store, owner, endpoint, 3)
    failed = Result(
        task_id=ids[1],
        ok=False,
        error=TaskError(code="TASK_FAILED", message="boom\x00", traceback="tb", exception=b"e"),
    )
    # within one batch, the first result for a task wins too
    finished = store.tasks.store_results(
        [(endpoint, [_ok(ids[0], b"first"), failed, _ok(ids[0], b"second")])], now=10.0
    )
    assert {record.task_id for record in finished} == {ids[0], ids[1]}
    assert store.tasks.store_results([(endpoint, [_ok(ids[0], b"again"), _ok(ids[1])])], now=11.0) == []
    stored = store.tasks.get_many(ids)
    assert stored[ids[0]].status is TaskStatus.SUCCESS and stored[ids[0]].result == b"first"
    assert stored[ids[0]].completed_at == 10.0 and stored[ids[0]].worker_python == "3.11.9"
    assert stored[ids[1]].status is TaskStatus.FAILED
    assert stored[ids[1]].error_message == "boom\ufffd"  # NUL is not storable everywhere
    assert stored[ids[1]].error_exception == b"e"
    assert stored[ids[2]].status is TaskStatus.WAITING
    # the records returned describe the tasks fully (the stream sends them as they are)
    record = next(r for r in finished if r.task_id == ids[0])
    assert (record.owner_id, record.endpoint_id, record.client_python, record.result) == (
        owner,
        endpoint,
        "3.11.7",
        b"first",
    )


def test_results_of_another_endpoint_or_unknown_tasks_are_ignored(store: Store) -> None:
    owner, endpoint, other = _user(store), uuid.uuid4(), uuid.uuid4()
    (task_id,) = _submit(store, owner, endpoint, 1)
    assert store.tasks.store_results([(other, [_ok(task_id)]), (other, [_ok(uuid.uuid4())])], now=1.0) == []
    assert store.tasks.get_many([task_id])[task_id].status is TaskStatus.WAITING
    # several messages from several endpoints in one call
    (theirs,) = _submit(store, owner, other, 1)
    done = store.tasks.store_results([(endpoint, [_ok(task_id)]), (other, [_ok(theirs)])], now=2.0)
    assert {record.task_id for record in done} == {task_id, theirs}


def test_many_tasks_in_chunks(store: Store) -> None:
    owner, endpoint = _user(store), uuid.uuid4()
    ids = _submit(store, owner, endpoint, 2500)
    assert len(store.tasks.get_many(ids)) == 2500
    done = store.tasks.store_results([(endpoint, [_ok(task_id) for task_id in ids[:2000]])], now=3.0)
    assert len(done) == 2000
    assert store.tasks.count(owner_id=owner, status=TaskStatus.WAITING) == 500
    assert set(store.tasks.finished_since(owner, 3.0)) == set(ids[:2000])
    assert store.tasks.finished_since(owner, 3.5) == []
    store.tasks.delete(ids[2000:2100])
    assert store.tasks.count(owner_id=owner) == 2400


def test_batches_of_any_size_reuse_a_few_statement_texts(store: Store) -> None:
    """Drivers cache prepared statements by text, and a long one holds megabytes: batches of 150
    different sizes must not become 150 different statements (that grew the forwarder's memory
    without bound)."""
    owner, endpoint = _user(store), uuid.uuid4()
    ids = _submit(store, owner, endpoint, sum(range(1, 151)))
    texts: set[str] = set()

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        texts.add(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        start = 0
        for size in range(1, 151):
            batch = ids[start : start + size]
            start += size
            assert len(store.tasks.store_results([(endpoint, [_ok(task_id) for task_id in batch])], now=1.0)) == size
            assert len(store.tasks.get_many(batch)) == size
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert store.tasks.count(owner_id=owner, status=TaskStatus.SUCCESS) == len(ids)
    updates = {text for text in texts if text.lstrip().upper().startswith("UPDATE")}
    reads = {text for text in texts if text.lstrip().upper().startswith("SELECT")}
    assert 1 <= len(updates) <= 8, len(updates)  # 1..128 rows: powers of two (SQLite); one text (PostgreSQL)
    assert 1 <= len(reads) <= 8, len(reads)


def test_failures_respect_the_endpoint_guard(store: Store) -> None:
    owner, endpoint, other = _user(store), uuid.uuid4(), uuid.uuid4()
    ids = _submit(store, owner, endpoint, 3)
    store.tasks.store_results([(endpoint, [_ok(ids[0])])], now=1.0)
    failure = Failure("DEAD_LETTERED", "dead")
    assert store.tasks.fail(ids, failure, now=2.0, endpoint_id=other) == []
    failed = store.tasks.fail(ids, failure, now=2.0, endpoint_id=endpoint)
    assert {record.task_id for record in failed} == set(ids[1:])  # the finished one stays finished
    assert {record.error_code for record in failed} == {"DEAD_LETTERED"}
    assert store.tasks.get_many([ids[0]])[ids[0]].status is TaskStatus.SUCCESS
    more = _submit(store, owner, endpoint, 4)
    gone = store.tasks.fail_endpoint(endpoint, Failure("ENDPOINT_DELETED", "deleted"), now=3.0)
    assert {record.task_id for record in gone} == set(more)


def test_expired_results_are_deleted(store: Store) -> None:
    owner, endpoint = _user(store), uuid.uuid4()
    ids = _submit(store, owner, endpoint, 5)
    store.tasks.store_results([(endpoint, [_ok(task_id) for task_id in ids[:3]])], now=100.0)
    store.tasks.store_results([(endpoint, [_ok(ids[3])])], now=5000.0)
    while store.tasks.delete_expired(1000.0, limit=2):
        pass
    assert set(store.tasks.get_many(ids)) == {ids[3], ids[4]}


def test_functions_users_endpoints(store: Store) -> None:
    owner = _user(store)
    record, created = store.functions.add(
        owner_id=owner, name="f", body=b"body", content_hash="h" * 64, python_version="3.11"
    )
    again, created_again = store.functions.add(
        owner_id=owner, name="g", body=b"body", content_hash="h" * 64, python_version=""
    )
    assert created and not created_again and again.function_id == record.function_id
    assert store.functions.owners([record.function_id, uuid.uuid4()]) == {record.function_id: owner}
    assert store.functions.bodies([record.function_id]) == {record.function_id: (b"body", "3.11")}

    with pytest.raises(StoreConflict):
        store.users.create(store.users.get(owner).username)  # type: ignore[union-attr]

    endpoint = EndpointRecord(
        endpoint_id=uuid.uuid4(),
        owner_id=owner,
        name="lab",
        queue_secret="ab" * 16,
        broker_username="ep-x",
        created_at=1.0,
    )
    store.endpoints.add(endpoint)
    with pytest.raises(StoreConflict):
        store.endpoints.add(_same_name(endpoint))
    store.endpoints.record_statuses(
        [(endpoint.endpoint_id, StatusReport(state="online", last_heartbeat_at=5.0, workers=2**40, hostname="h\x00"))]
    )
    status = store.endpoints.get(endpoint.endpoint_id).status  # type: ignore[union-attr]
    assert (status.state, status.workers, status.hostname) == ("online", 2**31 - 1, "h\ufffd")
    assert store.endpoints.find(owner, "lab") is not None
    assert store.endpoints.delete(endpoint.endpoint_id)
    assert store.endpoints.list(owner) == []


def _same_name(endpoint: EndpointRecord) -> EndpointRecord:
    return EndpointRecord(
        endpoint_id=uuid.uuid4(),
        owner_id=endpoint.owner_id,
        name=endpoint.name,
        queue_secret="cd" * 16,
        broker_username="ep-y",
        created_at=2.0,
    )


def test_an_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        Store.open("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_the_scaling_decision_an_endpoint_reports_is_stored(store: Store) -> None:
    """Issue 10 item 7.5: the agent's `EndpointStatus.scaling` used to be dropped."""
    owner = _user(store)
    endpoint = EndpointRecord(
        endpoint_id=uuid.uuid4(),
        owner_id=owner,
        name="scaled",
        queue_secret="cd" * 16,
        broker_username="ep-y",
        created_at=1.0,
    )
    store.endpoints.add(endpoint)
    decision = "scale out by 2 blocks: 40 tasks waiting, 8 slots" + "!" * 2000
    store.endpoints.record_statuses(
        [(endpoint.endpoint_id, StatusReport(state="online", last_heartbeat_at=5.0, scaling=decision + "\x00"))]
    )
    status = store.endpoints.get(endpoint.endpoint_id).status  # type: ignore[union-attr]
    assert status.scaling.startswith("scale out by 2 blocks: 40 tasks waiting, 8 slots")
    assert len(status.scaling) == 1024  # bounded: it comes from an endpoint


def test_a_schema_v1_database_gains_the_endpoint_scaling_column(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    url = f"sqlite:///{tmp_path / 'v1.db'}"
    with Store.open(url) as opened, opened.engine.begin() as connection:  # as schema v1 left it:
        connection.execute(text("ALTER TABLE endpoints DROP COLUMN scaling"))
        connection.execute(text("UPDATE schema_version SET version = 1"))
    with Store.open(url, upgrade=True) as migrated:
        columns = {column["name"] for column in inspect(migrated.engine).get_columns("endpoints")}
        assert "scaling" in columns
        owner = _user(migrated)
        record = EndpointRecord(
            endpoint_id=uuid.uuid4(),
            owner_id=owner,
            name="old",
            queue_secret="ef" * 16,
            broker_username="ep-z",
            created_at=1.0,
        )
        migrated.endpoints.add(record)
        assert migrated.endpoints.get(record.endpoint_id).status.scaling == ""  # type: ignore[union-attr]


def test_a_wrong_claim_first_in_the_same_call_does_not_hide_the_genuine_result(store: Store) -> None:
    """Another endpoint reporting this endpoint's task, in the same ingest call and before the
    genuine result: the genuine one is stored (it was dropped when outcomes were keyed by task
    alone, and the task stayed waiting for ever)."""
    owner, endpoint, other = _user(store), uuid.uuid4(), uuid.uuid4()
    (task_id,) = _submit(store, owner, endpoint, 1)
    done = store.tasks.store_results(
        [(other, [_ok(task_id, b"forged")]), (endpoint, [_ok(task_id, b"genuine")])], now=1.0
    )
    assert [record.task_id for record in done] == [task_id]
    stored = store.tasks.get_many([task_id])[task_id]
    assert stored.status is TaskStatus.SUCCESS and stored.result == b"genuine"
    # and the other way round: the genuine first, then a wrong claim: the genuine stays
    (second,) = _submit(store, owner, endpoint, 1)
    store.tasks.store_results([(endpoint, [_ok(second, b"genuine")]), (other, [_ok(second, b"forged")])], now=2.0)
    assert store.tasks.get_many([second])[second].result == b"genuine"
