"""The agent's on-disk ledger: intake dedupe, completion, stored results, recovery after a restart."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from taskfabric.endpoint_agent.ledger import Ledger
from taskfabric.errors import ErrorCode, LedgerError
from taskfabric.protocol import FunctionBody, Result, Task, TaskBatch, TaskError

FN = uuid.uuid4()


def batch(count: int, client: str = "3.11.7") -> TaskBatch:
    return TaskBatch(
        tasks=[Task(task_id=uuid.uuid4(), function_id=FN, payload=b"p%d" % i, walltime_s=5.0) for i in range(count)],
        functions=[FunctionBody(function_id=FN, body=b"body", python_version="3.11.7")],
        client_python=client,
    )


def test_record_returns_only_new_tasks(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    first = batch(3)
    assert [held.task for held in ledger.record([first])] == first.tasks
    assert ledger.record([first]) == []  # a redelivered message runs nothing twice
    assert ledger.counts() == {"held": 3, "stored_results": 0}


def test_completed_tasks_are_forgotten_but_not_rerun(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    first = batch(2)
    ledger.record([first])
    ledger.complete([first.tasks[0].task_id])
    ledger.flush()
    assert ledger.counts()["held"] == 1
    assert ledger.record([first]) == []  # the answered one is remembered as done


def test_recovery_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    first = batch(3, client="3.10.1")
    ledger.record([first])
    ledger.set_attempts(first.tasks[1].task_id, 2)
    failed = Result(task_id=first.tasks[2].task_id, ok=False, error=TaskError(code=ErrorCode.TASK_FAILED, message="x"))
    ledger.store_results([failed])
    ledger.complete([first.tasks[0].task_id])
    ledger.flush()
    ledger.close()

    reopened = Ledger(path)
    to_run, to_publish = reopened.unfinished()
    assert [held.task for held in to_run] == [first.tasks[1]]
    assert to_run[0].attempts == 2
    assert to_run[0].client_python == "3.10.1"
    assert to_publish == [failed]
    assert reopened.stored_results() == [failed]
    assert reopened.functions([FN]) == first.functions
    assert first.tasks[1].task_id in reopened
    # new tasks after a restart get fresh rows (no clash with the old ones)
    more = batch(2)
    assert len(reopened.record([more])) == 2
    reopened.complete([first.tasks[1].task_id, first.tasks[2].task_id, *[t.task_id for t in more.tasks]])
    reopened.flush()
    assert reopened.counts() == {"held": 0, "stored_results": 0}


def test_staged_tasks_are_written_in_one_flush_and_answered_ones_never(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    first = batch(4)
    fresh = ledger.stage([first])
    assert len(fresh) == 4 and ledger.counts()["held"] == 0  # nothing on disk yet
    assert ledger.stage([first]) == []  # staged tasks are known too
    ledger.complete([first.tasks[0].task_id])  # answered before the flush: never written
    ledger.set_attempts(first.tasks[1].task_id, 2)  # changes the staged row
    written = ledger.flush()
    assert set(written) == {task.task_id for task in first.tasks[1:]}
    assert ledger.counts()["held"] == 3
    assert ledger.flush() == []
    to_run, _ = Ledger(tmp_path / "l.sqlite").unfinished()
    assert {held.task_id: held.attempts for held in to_run}[first.tasks[1].task_id] == 2


def test_storing_results_writes_staged_tasks_first(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    first = batch(1)
    ledger.stage([first])
    failed = Result(task_id=first.tasks[0].task_id, ok=False, error=TaskError(code=ErrorCode.TASK_FAILED, message="x"))
    ledger.store_results([failed])
    assert ledger.counts() == {"held": 1, "stored_results": 1}


def test_cancelled_ids_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    cancelled, other = uuid.uuid4(), uuid.uuid4()
    ledger.record_cancels([cancelled])
    assert ledger.is_cancelled(cancelled)
    assert not ledger.is_cancelled(other)
    ledger.close()
    reopened = Ledger(path)  # a task arriving after a restart is still known as cancelled
    assert reopened.is_cancelled(cancelled)
    assert not reopened.is_cancelled(other)


def test_cancelled_ids_expire(tmp_path: Path) -> None:
    from taskfabric.endpoint_agent.ledger import CANCEL_MEMORY_S

    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    old, recent = uuid.uuid4(), uuid.uuid4()
    now = time.time()
    ledger.record_cancels([old], now=now - CANCEL_MEMORY_S - 10)
    ledger.record_cancels([recent], now=now)
    assert ledger.is_cancelled(old)
    assert ledger.forget_expired_cancels(now=now) == 1
    assert not ledger.is_cancelled(old)
    assert ledger.is_cancelled(recent)
    ledger.close()
    reopened = Ledger(path)
    assert not reopened.is_cancelled(old)
    assert reopened.is_cancelled(recent)


def test_released_tasks_are_forgotten_and_taken_again_when_redelivered(tmp_path: Path) -> None:
    """Tasks handed back to the broker on a graceful stop leave the ledger; unlike completed ones,
    their redelivery is new work."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    tasks = batch(3)
    ledger.record([tasks])
    handed = [task.task_id for task in tasks.tasks[1:]]
    ledger.release(handed)
    ledger.flush()
    to_run, _ = ledger.unfinished()
    assert [held.task_id for held in to_run] == [tasks.tasks[0].task_id]
    assert {held.task_id for held in ledger.stage([tasks])} == set(handed)


def test_a_refused_write_raises_ledger_error_and_keeps_everything_staged(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    writable = ledger._db
    # the same file through a read-only connection: every write is refused, as on a full or
    # read-only disk (the integration test makes the real file immutable instead)
    ledger._db = sqlite3.connect(f"file:{tmp_path / 'ledger.sqlite'}?mode=ro", uri=True, isolation_level=None)
    fresh = ledger.stage([batch(3)])
    with pytest.raises(LedgerError, match="the ledger cannot"):
        ledger.flush()
    assert ledger.staged == 3
    ledger._db.close()
    ledger._db = writable
    assert sorted(ledger.flush()) == sorted(held.task_id for held in fresh)
    assert ledger.counts() == {"held": 3, "stored_results": 0}
    ledger.close()


def test_a_recovered_task_keeps_its_group_user_resource_specification_and_upload_grant(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    task = Task(
        task_id=uuid.uuid4(),
        function_id=FN,
        payload=b"p",
        task_group_id=uuid.uuid4(),
        user="alice",
        resource_specification={"num_cores": 4, "memory_mb": 512},
        result_upload_url="http://forwarder:8470",
        result_upload_grant="claims.mac",
        result_upload_min_bytes=65537,
    )
    ledger.record([TaskBatch(tasks=[task], functions=[])])
    ledger.set_attempts(task.task_id, 1)
    ledger.flush()
    ledger.close()
    (held,), _ = Ledger(path).unfinished()
    assert held.task == task and held.attempts == 1


def test_a_ledger_from_before_the_new_columns_opens_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """CREATE TABLE tasks (seq INTEGER PRIMARY KEY, task_id BLOB NOT NULL, function_id BLOB NOT NULL,
        payload BLOB NOT NULL, walltime_s REAL, submitted_at REAL, client_python TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL, result BLOB);"""
    )
    task_id = uuid.uuid4()
    old.execute(
        "INSERT INTO tasks (seq, task_id, function_id, payload, received_at) VALUES (1, ?, ?, ?, ?)",
        (task_id.bytes, FN.bytes, b"p", time.time()),
    )
    old.commit()
    old.close()
    ledger = Ledger(path)
    (held,), _ = ledger.unfinished()
    assert held.task == Task(task_id=task_id, function_id=FN, payload=b"p")
    fresh = ledger.record([batch(1)])  # and new tasks are written with every column
    assert len(fresh) == 1
    ledger.close()
