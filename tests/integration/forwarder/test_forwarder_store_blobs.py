"""Large results in the blob store, on real SQLite and PostgreSQL with a filesystem blob store:
the row keeps a reference, size and sha256; reads give the same bytes; blobs are deleted with
their task, at expiry and when a duplicate loses; a tampered blob is a typed failure; a result the
worker uploaded is recorded by reference, without the forwarder reading it."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

from sqlalchemy import inspect, select, text

from taskfabric.errors import ErrorCode
from taskfabric.forwarder.blobs import BlobStore, FilesystemBlobStore, blob_name
from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.store.schema import MIGRATIONS, tasks
from taskfabric.protocol import Result, ResultBlob

THRESHOLD = 1024


def _with_blobs(store: Store, folder: Path) -> Store:
    return Store(store.engine, blobs=FilesystemBlobStore(folder), blob_threshold_bytes=THRESHOLD)


def _submit(store: Store, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    owner = store.users.create(f"u-{uuid.uuid4().hex[:10]}").user_id
    endpoint = uuid.uuid4()
    new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(count)]
    store.tasks.insert(owner_id=owner, endpoint_id=endpoint, client_python="3.11.7", new_tasks=new, created_at=1.0)
    return endpoint, [task.task_id for task in new]


def _ok(task_id: uuid.UUID, value: bytes) -> Result:
    return Result(task_id=task_id, ok=True, value=value, worker_python="3.11.9", attempts=1)


def test_a_large_result_is_a_blob_the_row_names(store: Store, tmp_path: Path) -> None:
    blobbed = _with_blobs(store, tmp_path / "blobs")
    endpoint, (big_id, small_id) = _submit(blobbed, 2)
    big, small = os.urandom(3 * 1024 * 1024), b"s" * THRESHOLD
    done = blobbed.tasks.store_results([(endpoint, [_ok(big_id, big), _ok(small_id, small)])], now=time.time())
    assert {record.task_id: record.result for record in done} == {big_id: big, small_id: small}  # for the stream
    with store.engine.connect() as connection:
        rows = {
            row.task_id: row for row in connection.execute(select(tasks).where(tasks.c.task_id.in_([big_id, small_id])))
        }
    assert rows[big_id].result is None and rows[big_id].result_size == len(big)
    assert rows[big_id].result_sha256 == hashlib.sha256(big).hexdigest()
    assert (tmp_path / "blobs" / rows[big_id].result_blob).stat().st_size == len(big)
    assert bytes(rows[small_id].result) == small and rows[small_id].result_blob is None
    found = blobbed.tasks.get_many([big_id, small_id])
    assert found[big_id].result == big and found[big_id].status is TaskStatus.SUCCESS
    assert found[small_id].result == small
    assert blobbed.tasks.get_many([big_id], results=False)[big_id].result is None


def test_a_duplicate_result_leaves_no_blob_behind(store: Store, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobbed = _with_blobs(store, blobs)
    endpoint, (task_id,) = _submit(blobbed, 1)
    first, again = os.urandom(4096), os.urandom(4096)
    blobbed.tasks.store_results([(endpoint, [_ok(task_id, first)])], now=time.time())
    assert blobbed.tasks.store_results([(endpoint, [_ok(task_id, again)])], now=time.time()) == []
    other = uuid.uuid4()  # another endpoint's claim is ignored too
    assert blobbed.tasks.store_results([(other, [_ok(task_id, again)])], now=time.time()) == []
    assert blobbed.tasks.blobs is not None and blobbed.tasks.blobs.usage_bytes() == len(first)
    assert blobbed.tasks.get_many([task_id])[task_id].result == first


def test_blobs_go_with_their_tasks_at_expiry_and_deletion(store: Store, tmp_path: Path) -> None:
    blobbed = _with_blobs(store, tmp_path / "blobs")
    assert blobbed.tasks.blobs is not None
    baseline = blobbed.tasks.blobs.usage_bytes()
    endpoint, ids = _submit(blobbed, 3)
    now = time.time()
    blobbed.tasks.store_results([(endpoint, [_ok(task_id, os.urandom(200_000)) for task_id in ids[:2]])], now=now - 100)
    blobbed.tasks.store_results([(endpoint, [_ok(ids[2], os.urandom(200_000))])], now=now)
    assert blobbed.tasks.blobs.usage_bytes() == baseline + 600_000
    while blobbed.tasks.delete_expired(now - 50):
        pass
    assert blobbed.tasks.blobs.usage_bytes() == baseline + 200_000
    assert set(blobbed.tasks.get_many(ids)) == {ids[2]}
    blobbed.tasks.delete([ids[2]])
    assert blobbed.tasks.blobs.usage_bytes() == baseline
    assert blobbed.tasks.sweep_blobs(time.time() + 1) == 0


def test_a_tampered_blob_is_a_typed_failure_naming_the_task(store: Store, tmp_path: Path) -> None:
    blobbed = _with_blobs(store, tmp_path / "blobs")
    endpoint, (task_id, gone_id) = _submit(blobbed, 2)
    blobbed.tasks.store_results([(endpoint, [_ok(task_id, b"a" * 5000), _ok(gone_id, b"b" * 5000)])], now=time.time())
    with store.engine.connect() as connection:
        names = dict(
            connection.execute(
                select(tasks.c.task_id, tasks.c.result_blob).where(tasks.c.result_blob.is_not(None))
            ).all()
        )
    (tmp_path / "blobs" / names[task_id]).write_bytes(b"A" * 5000)
    (tmp_path / "blobs" / names[gone_id]).unlink()
    found = blobbed.tasks.get_many([task_id, gone_id])
    for failed in found.values():
        assert failed.status is TaskStatus.FAILED and failed.result is None
        assert failed.error_code == ErrorCode.RESULT_INTEGRITY
        assert str(failed.task_id) in (failed.error_message or "")
    assert "sha256" in (found[task_id].error_message or "") and "missing" in (found[gone_id].error_message or "")


def test_the_blob_migration_is_idempotent(store: Store) -> None:
    """Schema v8 on a table without its columns, twice; then on the current table (both backends).
    Rolled back: PostgreSQL's session database is shared (DDL is transactional on both)."""
    columns = ("result_blob", "result_size", "result_sha256")
    connection = store.engine.connect()
    try:
        with connection.begin() as transaction:
            MIGRATIONS[7](connection)  # the columns exist already: nothing happens
            for column in columns:
                connection.execute(text(f"ALTER TABLE tasks DROP COLUMN {column}"))
            MIGRATIONS[7](connection)
            MIGRATIONS[7](connection)
            present = {column["name"] for column in inspect(connection).get_columns("tasks")}
            assert set(columns) <= present
            transaction.rollback()
    finally:
        connection.close()


def test_results_in_an_s3_bucket(tmp_path: Path, s3_blobs: BlobStore) -> None:
    """The same life on the S3-compatible server (SQLite: the bucket is the point here)."""
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}", blobs=s3_blobs, blob_threshold_bytes=THRESHOLD) as store:
        endpoint, (kept_id, expired_id, tampered_id) = _submit(store, 3)
        kept, expired = os.urandom(2 * 1024 * 1024), os.urandom(5000)
        now = time.time()
        store.tasks.store_results([(endpoint, [_ok(expired_id, expired)])], now=now - 100)
        store.tasks.store_results([(endpoint, [_ok(kept_id, kept), _ok(tampered_id, b"t" * 5000)])], now=now)
        assert s3_blobs.usage_bytes() == len(kept) + len(expired) + 5000
        assert store.tasks.get_many([kept_id])[kept_id].result == kept
        ref = store.tasks.get_many([tampered_id], results=False)[tampered_id].blob_ref()
        assert ref is not None
        s3_blobs.put(ref.name, b"T" * 5000)  # the bucket's copy changed behind the forwarder
        assert store.tasks.get_many([tampered_id])[tampered_id].error_code == ErrorCode.RESULT_INTEGRITY
        while store.tasks.delete_expired(now - 50):
            pass
        store.tasks.delete([kept_id, tampered_id])
        assert s3_blobs.usage_bytes() == 0


def test_an_uploaded_result_is_recorded_without_copying_and_kept_when_delivered_again(
    store: Store, tmp_path: Path
) -> None:
    blobbed = _with_blobs(store, tmp_path / "blobs")
    assert blobbed.tasks.blobs is not None
    endpoint, (task_id,) = _submit(blobbed, 1)
    value = os.urandom(3 * 1024 * 1024)
    ref = blobbed.tasks.blobs.put(blob_name(task_id), value)  # what PUT /v1/tasks/{id}/result-blob did
    uploaded = ResultBlob(name=ref.name, size=ref.size, sha256=ref.sha256, receipt="checked at ingest")
    result = Result(task_id=task_id, ok=True, value_blob=uploaded, worker_python="3.11.9")
    (record,) = blobbed.tasks.store_results([(endpoint, [result])], now=time.time())
    # the stream gets the reference, not the bytes
    assert record.result is None and (record.result_size, record.result_sha256) == (ref.size, ref.sha256)
    with store.engine.connect() as connection:
        row = connection.execute(select(tasks).where(tasks.c.task_id == task_id)).one()
    assert (row.result, row.result_blob, row.result_size, row.result_sha256) == (None, ref.name, ref.size, ref.sha256)
    # the same delivery again (its ack was lost): ignored, and the recorded blob stays
    assert blobbed.tasks.store_results([(endpoint, [result])], now=time.time()) == []
    assert blobbed.tasks.get_many([task_id])[task_id].result == value
    assert blobbed.tasks.blobs.usage_bytes() == len(value)
