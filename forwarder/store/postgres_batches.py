"""PostgreSQL's fast path for the two hot batch writes: one statement per 5,000 rows.

Round trips and per-row parameter handling dominate on PostgreSQL (an executemany of updates cost
~0.5 ms per row here), so the columns travel as arrays and are unnested into rows: one
`INSERT ... SELECT FROM unnest(...)` stores a submitted batch, and one `UPDATE ... FROM unnest(...)`
guarded by `status IN (<pending states>) AND endpoint_id = <claimant>` stores results, `RETURNING` what it
finished.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, text

from taskfabric.forwarder.records import NewTask, TaskRecord, TaskStatus
from taskfabric.forwarder.store._sql import chunks
from taskfabric.forwarder.store.outcomes import OUTCOME_FIELDS, Outcome, finished

__all__ = ["finish_waiting", "insert_waiting"]

_CHUNK = 5000

_WAITING = TaskStatus.WAITING.value
_PENDING = ", ".join(f"'{status.value}'" for status in TaskStatus if status.pending)

_INSERT = text(
    f"""
INSERT INTO tasks (task_id, owner_id, endpoint_id, function_id, status, created_at, client_python, attempts,
    task_group_id)
SELECT t.task_id, :owner_id, :endpoint_id, t.function_id, '{_WAITING}', :created_at, :client_python, 0,
    CAST(:task_group_id AS uuid)
FROM unnest(CAST(:task_ids AS uuid[]), CAST(:function_ids AS uuid[])) AS t(task_id, function_id)
"""
)

_FINISH = text(
    f"""
UPDATE tasks SET status = v.status, completed_at = v.completed_at, result = v.result,
    error_code = v.error_code, error_message = v.error_message, error_traceback = v.error_traceback,
    error_exception_type = v.error_exception_type, error_exception = v.error_exception,
    worker_python = v.worker_python, received_at = v.received_at, started_at = v.started_at,
    finished_at = v.finished_at, attempts = v.attempts, stdout = v.stdout, stderr = v.stderr
FROM unnest(
    CAST(:task_id AS uuid[]), CAST(:endpoint_id AS uuid[]), CAST(:status AS text[]),
    CAST(:completed_at AS float8[]), CAST(:result AS bytea[]), CAST(:error_code AS text[]),
    CAST(:error_message AS text[]), CAST(:error_traceback AS text[]), CAST(:error_exception_type AS text[]),
    CAST(:error_exception AS bytea[]), CAST(:worker_python AS text[]), CAST(:received_at AS float8[]),
    CAST(:started_at AS float8[]), CAST(:finished_at AS float8[]), CAST(:attempts AS int[]),
    CAST(:stdout AS text[]), CAST(:stderr AS text[])
) AS v(task_id, endpoint_id, status, completed_at, result, error_code, error_message, error_traceback,
       error_exception_type, error_exception, worker_python, received_at, started_at, finished_at, attempts,
       stdout, stderr)
WHERE tasks.task_id = v.task_id AND tasks.endpoint_id = v.endpoint_id AND tasks.status IN ({_PENDING})
RETURNING tasks.task_id, tasks.owner_id, tasks.function_id, tasks.created_at, tasks.client_python, tasks.task_group_id
"""
)


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
    for chunk in chunks(new_tasks, _CHUNK):
        connection.execute(
            _INSERT,
            {
                "owner_id": owner_id,
                "endpoint_id": endpoint_id,
                "created_at": created_at,
                "client_python": client_python,
                "task_group_id": task_group_id,
                "task_ids": [task.task_id for task in chunk],
                "function_ids": [task.function_id for task in chunk],
            },
        )


def finish_waiting(connection: Connection, outcomes: dict[uuid.UUID, Outcome]) -> list[TaskRecord]:
    """Store the outcomes of the tasks still pending (waiting or running) on the endpoint that claims them."""
    done: list[TaskRecord] = []
    for chunk in chunks(list(outcomes.items()), _CHUNK):
        arrays: dict[str, list[Any]] = {"task_id": [task_id for task_id, _ in chunk]}
        for name in OUTCOME_FIELDS:
            arrays[name] = [getattr(outcome, name) for _, outcome in chunk]
        arrays["status"] = [status.value for status in arrays["status"]]
        for task_id, owner_id, function_id, created_at, client_python, task_group_id in connection.execute(
            _FINISH, arrays
        ):
            done.append(
                finished(
                    task_id,
                    outcomes[task_id],
                    owner_id=owner_id,
                    function_id=function_id,
                    created_at=created_at,
                    client_python=client_python,
                    task_group_id=task_group_id,
                )
            )
    return done
