"""SQLite's fast path for the two hot batch writes: submitted tasks and reported results.

Plain DBAPI `executemany` with prepared tuples, skipping SQLAlchemy's per-row parameter processing
(which cost more than SQLite itself). Ids are written exactly as SQLAlchemy's `Uuid` type writes
them on SQLite (32 lowercase hex digits), so every other query reads them back unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Connection

from taskfabric.forwarder.records import NewTask, TaskRecord, TaskStatus
from taskfabric.forwarder.store._sql import statement_chunks
from taskfabric.forwarder.store.outcomes import Outcome, finished

__all__ = ["finish_waiting", "insert_waiting"]

_INSERT = (
    "INSERT INTO tasks (task_id, owner_id, endpoint_id, function_id, status, created_at, client_python, attempts,"
    f" task_group_id) VALUES (?, ?, ?, ?, '{TaskStatus.WAITING.value}', ?, ?, 0, ?)"
)
#: the states a result may still finish (waiting, running)
_PENDING = ", ".join(f"'{status.value}'" for status in TaskStatus if status.pending)

_FINISH_COLUMNS = (
    "status",
    "completed_at",
    "result",
    "error_code",
    "error_message",
    "error_traceback",
    "error_exception_type",
    "error_exception",
    "worker_python",
    "received_at",
    "started_at",
    "finished_at",
    "attempts",
    "stdout",
    "stderr",
)
# v.column1 = task id, v.column2 = the claiming endpoint, then the columns above in order
_FINISH_RETURNING = (
    "UPDATE tasks SET "
    + ", ".join(f"{name} = v.column{index + 3}" for index, name in enumerate(_FINISH_COLUMNS))
    + " FROM (VALUES {values}) AS v"
    f" WHERE tasks.task_id = v.column1 AND tasks.endpoint_id = v.column2 AND tasks.status IN ({_PENDING})"
    " RETURNING tasks.task_id, tasks.owner_id, tasks.function_id, tasks.created_at, tasks.client_python,"
    " tasks.task_group_id"
)
_ROW_MARKS = "(" + ", ".join("?" * (2 + len(_FINISH_COLUMNS))) + ")"
#: the most rows per statement: 17 parameters each, well under SQLite's 32,766 limit
_FINISH_CHUNK = 512


def insert_waiting(
    connection: Connection,
    *,
    owner_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    client_python: str,
    new_tasks: Sequence[NewTask],
    created_at: float,
    task_group_id: uuid.UUID | None = None,
) -> None:
    owner, endpoint = owner_id.hex, endpoint_id.hex
    group = task_group_id.hex if task_group_id is not None else None
    rows = [
        (task.task_id.hex, owner, endpoint, task.function_id.hex, created_at, client_python, group)
        for task in new_tasks
    ]
    connection.exec_driver_sql(_INSERT, rows)


def finish_waiting(connection: Connection, outcomes: dict[uuid.UUID, Outcome]) -> list[TaskRecord]:
    """Store the outcomes of the tasks still pending (waiting or running) on the endpoint that claims them.

    One `UPDATE ... FROM (VALUES ...) RETURNING` per chunk (of a few fixed lengths): SQLite finds each task by its key,
    updates only those still pending on that endpoint (a duplicate or another endpoint's claim
    changes nothing), and hands back what the finished records need."""
    by_hex = {task_id.hex: (task_id, outcome) for task_id, outcome in outcomes.items()}
    ids: dict[str, uuid.UUID] = {}  # few distinct owners/functions: build each UUID once

    def as_uuid(text: str) -> uuid.UUID:
        found = ids.get(text)
        if found is None:
            found = ids[text] = uuid.UUID(hex=text)
        return found

    done: list[TaskRecord] = []
    for chunk in statement_chunks(list(by_hex), _FINISH_CHUNK):
        params: list[object] = []
        for task_hex in chunk:
            params.extend(_finish_row(task_hex, by_hex[task_hex][1]))
        query = _FINISH_RETURNING.format(values=", ".join([_ROW_MARKS] * len(chunk)))
        for task_hex, owner_hex, function_hex, created_at, client_python, group_hex in connection.exec_driver_sql(
            query, tuple(params)
        ):
            task_id, outcome = by_hex[task_hex]
            done.append(
                finished(
                    task_id,
                    outcome,
                    owner_id=as_uuid(owner_hex),
                    function_id=as_uuid(function_hex),
                    created_at=created_at,
                    client_python=client_python,
                    task_group_id=as_uuid(group_hex) if group_hex else None,
                )
            )
    return done


def _finish_row(task_hex: str, outcome: Outcome) -> tuple[object, ...]:
    return (
        task_hex,
        outcome.endpoint_id.hex,
        outcome.status.value,
        outcome.completed_at,
        outcome.result,
        outcome.error_code,
        outcome.error_message,
        outcome.error_traceback,
        outcome.error_exception_type,
        outcome.error_exception,
        outcome.worker_python,
        outcome.received_at,
        outcome.started_at,
        outcome.finished_at,
        outcome.attempts,
        outcome.stdout,
        outcome.stderr,
    )
