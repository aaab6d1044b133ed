"""The store's side of the web dashboard, on SQLite and PostgreSQL: the aggregates its pages show,
the blocks an endpoint reports (with their job ids, bounded: they come from an endpoint), and the
schema v5 migration that adds them (idempotent)."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import inspect, text

from taskfabric.forwarder.auth import hash_token
from taskfabric.forwarder.records import EndpointRecord, NewTask, StatusReport
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.store.schema import MIGRATIONS
from taskfabric.protocol import MAX_BLOCK_REPORTS, BlockReport, Result, TaskError


def _endpoint(store: Store, owner: uuid.UUID) -> EndpointRecord:
    record = EndpointRecord(
        endpoint_id=uuid.uuid4(),
        owner_id=owner,
        name=f"ep-{uuid.uuid4().hex[:6]}",
        queue_secret="ab" * 16,
        broker_username=f"ep-{uuid.uuid4().hex[:6]}",
        created_at=1.0,
    )
    store.endpoints.add(record)
    return record


def test_the_dashboard_aggregates_count_only_what_they_are_asked(store: Store) -> None:
    owner = store.users.create(f"u-{uuid.uuid4().hex[:8]}").user_id
    mine, other = _endpoint(store, owner), _endpoint(store, owner)
    function, unused = uuid.uuid4(), uuid.uuid4()
    new = [NewTask(task_id=uuid.uuid4(), function_id=function, payload=b"") for _ in range(5)]
    store.tasks.insert(
        owner_id=owner, endpoint_id=mine.endpoint_id, client_python="3.11.7", new_tasks=new, created_at=100.0
    )
    store.tasks.insert(
        owner_id=owner,
        endpoint_id=other.endpoint_id,
        client_python="3.11.7",
        new_tasks=[NewTask(task_id=uuid.uuid4(), function_id=function, payload=b"")],
        created_at=100.0,
    )
    failed = TaskError(code="WALLTIME_EXCEEDED", message="late", traceback="", exception_type="")
    results = [Result(task_id=task.task_id, ok=True, value=b"v") for task in new[:3]]
    results.append(Result(task_id=new[3].task_id, ok=False, error=failed))
    store.tasks.store_results([(mine.endpoint_id, results)], now=6000.0)  # minute 100
    dashboard = store.dashboard
    assert dashboard.completed_per_minute(mine.endpoint_id, since=5000.0) == {100: 3}
    assert dashboard.completed_per_minute(mine.endpoint_id, since=6001.0) == {}
    assert dashboard.completed_per_minute(other.endpoint_id, since=0.0) == {}
    assert dashboard.failures_by_code(mine.endpoint_id, since=5000.0) == {"WALLTIME_EXCEEDED": 1}
    assert dashboard.function_usage([function, unused]) == {function: 6}
    assert dashboard.function_usage([]) == {}


def test_tokens_are_listed_without_secrets(store: Store) -> None:
    user = store.users.create(f"u-{uuid.uuid4().hex[:8]}")
    store.users.add_token(user.user_id, hash_token("tf_secret"), description="laptop")
    listed = [token for token in store.dashboard.tokens() if token.username == user.username]
    assert [(token.description, token.username) for token in listed] == [("laptop", user.username)]
    assert "tf_secret" not in repr(listed) and hash_token("tf_secret") not in repr(listed)


def test_reported_blocks_are_kept_with_their_job_ids_and_bounded(store: Store) -> None:
    owner = store.users.create(f"u-{uuid.uuid4().hex[:8]}").user_id
    endpoint = _endpoint(store, owner)
    blocks = (
        BlockReport(block_id="0", job_id="4242.cluster", state="running", submitted_at=10.0),
        BlockReport(block_id="1" * 500, job_id="j\x00" * 300, state="pending" * 10, submitted_at=11.0),
        BlockReport(block_id="nan", job_id="x", state="pending", submitted_at=float("nan")),
        *(BlockReport(block_id=str(i), job_id=str(i), state="pending", submitted_at=1.0) for i in range(300)),
    )
    store.endpoints.record_statuses([(endpoint.endpoint_id, StatusReport(state="online", blocks=blocks))])
    kept = store.endpoints.get(endpoint.endpoint_id).status.blocks  # type: ignore[union-attr]
    assert kept[0] == blocks[0]
    assert len(kept[1].block_id) == 128 and len(kept[1].state) == 16 and "\x00" not in kept[1].job_id
    assert "nan" not in [block.block_id for block in kept], "a time that is not a number is dropped"
    assert len(kept) == MAX_BLOCK_REPORTS - 1
    store.endpoints.record_statuses([(endpoint.endpoint_id, StatusReport(state="online"))])
    assert store.endpoints.get(endpoint.endpoint_id).status.blocks == ()  # type: ignore[union-attr]


def test_a_schema_v2_database_gains_the_blocks_column_and_migrating_again_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    with Store.open(url) as opened, opened.engine.begin() as connection:  # as schema v2 left it:
        connection.execute(text("ALTER TABLE endpoints DROP COLUMN blocks"))
        connection.execute(text("UPDATE schema_version SET version = 2"))
    with Store.open(url, upgrade=True) as migrated:
        assert "blocks" in {column["name"] for column in inspect(migrated.engine).get_columns("endpoints")}
        owner = migrated.users.create("old").user_id
        record = _endpoint(migrated, owner)
        assert migrated.endpoints.get(record.endpoint_id).status.blocks == ()  # type: ignore[union-attr]
        with migrated.engine.begin() as connection:
            (migration,) = [step for step in MIGRATIONS if step.__name__ == "_v5_dashboard"]
            migration(connection)  # again: idempotent
        assert migrated.endpoints.get(record.endpoint_id) is not None
