"""The agent's ledger: tasks it has taken from the broker and not yet answered, kept on disk.

DESIGN (the ack point): the agent acknowledges a task message to RabbitMQ once each of its tasks is
*safe*: committed here, or already answered (its result confirmed by the broker) — never when it
merely finishes running. So no delivery is held for the length of a task (tasks longer than the
broker's `consumer_timeout` complete normally), and no task is lost when the agent dies: a message
not yet acked is redelivered, and on restart every task still in the ledger is run again (or, if its
result was already made, that result is re-published). A task is deleted from the ledger only once
the broker has confirmed its result. Results that cannot be published yet (broker down) are stored
next to their task and re-sent later. A crash can therefore run a task twice; the forwarder keeps
the first result per task id.

Group commit: tasks are *staged* as they arrive (and run at once) and written in one transaction
every few milliseconds (`flush`). A task whose result is confirmed before that is never written at
all — most short tasks never touch the disk — and its message is acked all the same.

Disk failures: a write that fails (disk full, read-only, I/O error) raises `LedgerError` and
changes nothing: staged tasks stay staged, so the caller may retry `flush` later (the agent does,
with back-off, and takes no new tasks meanwhile).

A memory of recently finished task ids (in RAM, the last `DONE_MEMORY` of them) keeps a task
message that the broker redelivers (an ack lost with a dropped connection) from re-running tasks
already answered; after a restart that memory is empty and such a task may run twice (the forwarder
reports it once).

Cancellations: the ids of cancelled tasks are kept in their own table (written at once, before
the control message is acked) for `CANCEL_MEMORY_S`, so a task that arrives after its cancel, in a
later message or after a restart, is recognised and dropped instead of run.

Layout: rows are keyed by an increasing integer in arrival order and the task id -> row map lives in
RAM, so the deletes of one commit touch few, neighbouring pages (random-UUID keys would dirty a page
per task). SQLite in WAL mode with synchronous=NORMAL: a committed transaction survives the agent
being killed (it is in the OS's page cache); a power loss may lose the last transactions (their
tasks re-run or wait in the broker: at-least-once still holds).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from taskfabric.errors import LedgerError
from taskfabric.protocol import FunctionBody, Result, ResultBatch, Task, TaskBatch, pack, unpack_as

__all__ = ["CANCEL_MEMORY_S", "DONE_MEMORY", "HeldTask", "Ledger"]

#: how many recently finished task ids the ledger remembers (in two generations)
DONE_MEMORY = 200_000
#: how long a cancelled task id is remembered: longer than a task message plausibly waits in the
#: task queue behind a backlog or an offline endpoint
CANCEL_MEMORY_S = 30 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,
    task_id BLOB NOT NULL,
    function_id BLOB NOT NULL,
    payload BLOB NOT NULL,
    walltime_s REAL,
    submitted_at REAL,
    client_python TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL,
    result BLOB,
    task_group_id BLOB,
    user TEXT NOT NULL DEFAULT '',
    resource_specification TEXT NOT NULL DEFAULT '{}',
    result_upload TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS cancelled (
    task_id BLOB PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS functions (
    function_id BLOB PRIMARY KEY,
    body BLOB NOT NULL,
    python_version TEXT NOT NULL DEFAULT ''
);
"""

#: task columns added after the first ledger format (added to an older file when it is opened)
_ADDED_COLUMNS = {
    "task_group_id": "BLOB",
    "user": "TEXT NOT NULL DEFAULT ''",
    "resource_specification": "TEXT NOT NULL DEFAULT '{}'",
    # the task's result upload grant (issue 15): a recovered task still uploads a large result
    "result_upload": "TEXT NOT NULL DEFAULT ''",
}


@dataclasses.dataclass(slots=True)
class HeldTask:
    """A task in the agent's hands (waiting for a manager, or running on one)."""

    task: Task
    client_python: str = ""
    #: how many times a system failure (lost worker or manager) cost this task a run
    attempts: int = 0

    @property
    def task_id(self) -> uuid.UUID:
        return self.task.task_id


class Ledger:
    """The on-disk record of an agent's unanswered tasks. Used from one thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._rows: dict[uuid.UUID, int] = {}  # held task -> its row
        for seq, task_id in self._db.execute("SELECT seq, task_id FROM tasks"):
            self._rows[uuid.UUID(bytes=task_id)] = seq
        self._next_seq = 1 + (self._db.execute("SELECT MAX(seq) FROM tasks").fetchone()[0] or 0)
        self._done: set[uuid.UUID] = set()
        self._done_before: set[uuid.UUID] = set()
        self._staged: dict[uuid.UUID, list[Any]] = {}  # task -> its row, not yet written
        self._staged_functions: dict[uuid.UUID, FunctionBody] = {}
        self._deletes: list[tuple[int]] = []
        self._cancelled: dict[uuid.UUID, float] = {}  # task -> when the memory of its cancel expires
        self.forget_expired_cancels()
        for task_id, expires_at in self._db.execute("SELECT task_id, expires_at FROM cancelled"):
            self._cancelled[uuid.UUID(bytes=task_id)] = expires_at

    def close(self) -> None:
        self._db.close()

    def _add_missing_columns(self) -> None:
        """A ledger written by an older agent lacks the newer task columns: add them (their
        defaults describe tasks that had none of these)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        for name, definition in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {definition}")

    @property
    def staged(self) -> int:
        """Tasks and deletions waiting for the next `flush`."""
        return len(self._staged) + len(self._deletes)

    # --- intake -------------------------------------------------------------------------

    def stage(self, batches: Iterable[TaskBatch], *, now: float | None = None) -> list[HeldTask]:
        """Take the tasks of `batches` (written at the next `flush`); return the new ones (a task
        already held or recently answered is not run again)."""
        received_at = time.time() if now is None else now
        fresh: list[HeldTask] = []
        for batch in batches:
            for body in batch.functions:
                self._staged_functions[body.function_id] = body
            for task in batch.tasks:
                task_id = task.task_id
                if task_id in self._rows or task_id in self._done or task_id in self._done_before:
                    continue
                seq = self._next_seq
                self._next_seq += 1
                self._rows[task_id] = seq
                fresh.append(HeldTask(task, batch.client_python))
                self._staged[task_id] = [
                    seq,
                    task_id.bytes,
                    task.function_id.bytes,
                    task.payload,
                    task.walltime_s,
                    task.submitted_at,
                    batch.client_python,
                    received_at,
                    task.task_group_id.bytes if task.task_group_id is not None else None,
                    task.user,
                    json.dumps(task.resource_specification),
                    _upload_column(task),
                    0,  # attempts: last (see set_attempts)
                ]
        return fresh

    def record(self, batches: Iterable[TaskBatch], *, now: float | None = None) -> list[HeldTask]:
        """Stage and write at once (for callers that do not group their commits)."""
        fresh = self.stage(batches, now=now)
        self.flush()
        return fresh

    def flush(self) -> list[uuid.UUID]:
        """Write everything staged, in one transaction; returns the tasks now on disk."""
        if not self._staged and not self._deletes and not self._staged_functions:
            return []
        written = list(self._staged)
        with self._transaction():
            if self._staged_functions:
                self._db.executemany(
                    "INSERT OR IGNORE INTO functions (function_id, body, python_version) VALUES (?, ?, ?)",
                    [(f.function_id.bytes, f.body, f.python_version) for f in self._staged_functions.values()],
                )
            if self._staged:
                self._db.executemany(
                    "INSERT INTO tasks (seq, task_id, function_id, payload, walltime_s, submitted_at, client_python, "
                    "received_at, task_group_id, user, resource_specification, result_upload, attempts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    list(self._staged.values()),
                )
            if self._deletes:
                self._db.executemany("DELETE FROM tasks WHERE seq = ?", self._deletes)
        self._staged.clear()
        self._staged_functions.clear()
        self._deletes = []
        return written

    # --- progress -----------------------------------------------------------------------

    def set_attempts(self, task_id: uuid.UUID, attempts: int) -> None:
        staged = self._staged.get(task_id)
        if staged is not None:
            staged[-1] = attempts
            return
        seq = self._rows.get(task_id)
        if seq is not None:
            with self._transaction():
                self._db.execute("UPDATE tasks SET attempts = ? WHERE seq = ?", (attempts, seq))

    def store_results(self, results: list[Result]) -> list[uuid.UUID]:
        """Keep results whose publishing failed, to re-send them later (also after a restart).
        Writes what was staged first; returns those tasks (now on disk), as `flush` does."""
        written = self.flush()
        rows = [
            (pack(ResultBatch(results=[result])), self._rows[result.task_id])
            for result in results
            if result.task_id in self._rows
        ]
        with self._transaction():
            self._db.executemany("UPDATE tasks SET result = ? WHERE seq = ?", rows)
        return written

    def complete(self, task_ids: Iterable[uuid.UUID]) -> None:
        """The broker confirmed these tasks' results: forget the tasks (at the next `flush`; one
        never written is simply dropped), remember they are done."""
        for task_id in task_ids:
            seq = self._rows.pop(task_id, None)
            if seq is not None and self._staged.pop(task_id, None) is None:
                self._deletes.append((seq,))
            self._remember_done(task_id)

    def release(self, task_ids: Iterable[uuid.UUID]) -> None:
        """Forget these tasks without answering them (handed back to the broker): written at the
        next `flush`; unlike `complete`, a later delivery of them is taken as new."""
        for task_id in task_ids:
            seq = self._rows.pop(task_id, None)
            if seq is not None and self._staged.pop(task_id, None) is None:
                self._deletes.append((seq,))

    def _remember_done(self, task_id: uuid.UUID) -> None:
        self._done.add(task_id)
        if len(self._done) >= DONE_MEMORY // 2:
            self._done_before, self._done = self._done, set()

    def __contains__(self, task_id: uuid.UUID) -> bool:
        return task_id in self._rows

    def held_ids(self) -> list[uuid.UUID]:
        """Every task taken and not yet answered (written or staged)."""
        return [*self._rows, *(task_id for task_id in self._staged if task_id not in self._rows)]

    # --- cancellations ------------------------------------------------------------------

    def record_cancels(self, task_ids: Iterable[uuid.UUID], *, now: float | None = None) -> None:
        """Remember (on disk, at once) that these tasks are cancelled, for `CANCEL_MEMORY_S`."""
        expires_at = (time.time() if now is None else now) + CANCEL_MEMORY_S
        rows = [(task_id.bytes, expires_at) for task_id in task_ids]
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO cancelled (task_id, expires_at) VALUES (?, ?)", rows)
        for task_id_bytes, _ in rows:
            self._cancelled[uuid.UUID(bytes=task_id_bytes)] = expires_at

    def is_cancelled(self, task_id: uuid.UUID) -> bool:
        return task_id in self._cancelled

    def forget_expired_cancels(self, *, now: float | None = None) -> int:
        """Drop cancellations older than `CANCEL_MEMORY_S`; returns how many."""
        now = time.time() if now is None else now
        deleted = self._db.execute("DELETE FROM cancelled WHERE expires_at < ?", (now,)).rowcount
        for task_id in [task_id for task_id, expires_at in self._cancelled.items() if expires_at < now]:
            del self._cancelled[task_id]
        return int(deleted)

    # --- recovery -----------------------------------------------------------------------

    def unfinished(self) -> tuple[list[HeldTask], list[Result]]:
        """After a restart: tasks to run again, and stored results to publish again (written ones)."""
        to_run: list[HeldTask] = []
        to_publish: list[Result] = []
        rows = self._db.execute(
            "SELECT task_id, function_id, payload, walltime_s, submitted_at, client_python, attempts, result, "
            "task_group_id, user, resource_specification, result_upload FROM tasks ORDER BY seq"
        )
        for row in rows:
            task_id, function_id, payload, walltime_s, submitted_at, client_python, attempts, result = row[:8]
            if result is not None:
                to_publish.extend(unpack_as(result, ResultBatch).results)
                continue
            task_group_id, user, resource_specification, result_upload = row[8:]
            upload = json.loads(result_upload) if result_upload else {}
            task = Task(
                task_id=uuid.UUID(bytes=task_id),
                function_id=uuid.UUID(bytes=function_id),
                payload=payload,
                walltime_s=walltime_s,
                submitted_at=submitted_at,
                task_group_id=uuid.UUID(bytes=task_group_id) if task_group_id is not None else None,
                user=user,
                resource_specification=json.loads(resource_specification),
                result_upload_url=str(upload.get("url", "")),
                result_upload_grant=str(upload.get("grant", "")),
                result_upload_min_bytes=int(upload.get("min_bytes", 0)),
            )
            to_run.append(HeldTask(task, client_python, attempts))
        return to_run, to_publish

    def stored_results(self, limit: int = 1000) -> list[Result]:
        rows = self._db.execute("SELECT result FROM tasks WHERE result IS NOT NULL LIMIT ?", (limit,))
        return [result for (data,) in rows for result in unpack_as(data, ResultBatch).results]

    def functions(self, function_ids: Iterable[uuid.UUID]) -> list[FunctionBody]:
        keys = [function_id.bytes for function_id in function_ids]
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        rows = self._db.execute(
            f"SELECT function_id, body, python_version FROM functions WHERE function_id IN ({marks})",
            keys,
        )
        return [FunctionBody(function_id=uuid.UUID(bytes=fid), body=body, python_version=pv) for fid, body, pv in rows]

    def counts(self) -> dict[str, int]:  # of what is on disk
        """How many tasks are held, and how many of those have stored results (for status)."""
        held, stored = self._db.execute("SELECT COUNT(*), COUNT(result) FROM tasks").fetchone()
        return {"held": held, "stored_results": stored}

    # --- internals ----------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT; a failure rolls back and is raised as `LedgerError`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise LedgerError(f"the ledger cannot start a write: {exc}") from exc

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: object) -> None:
        if kind is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as exc:
                self._rollback()
                raise LedgerError(f"the ledger cannot write: {exc}") from exc
        self._rollback()
        if isinstance(value, sqlite3.Error):
            raise LedgerError(f"the ledger cannot write: {value}") from value

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back by itself


def _upload_column(task: Task) -> str:
    """The task's result upload grant as the ledger keeps it ('' when it has none)."""
    if not task.result_upload_grant:
        return ""
    return json.dumps(
        {"url": task.result_upload_url, "grant": task.result_upload_grant, "min_bytes": task.result_upload_min_bytes}
    )
