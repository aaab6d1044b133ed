"""Tasks and their outcomes: the hot path, so every operation works on a batch.

- `insert`: one statement for a whole submit request (an executemany on SQLite, an
  `INSERT ... SELECT FROM unnest(...)` on PostgreSQL).
- `mark_started`: task starts reported by endpoints move `waiting` tasks to `running` (with
  `started_at` and the attempt number), and a `running` task to a later attempt; never a finished
  task, never another endpoint's, and a repeated start changes nothing.
- `store_results`: results of several broker messages in one transaction. A result for a finished
  task changes nothing (the first outcome wins; duplicates are dropped by task id); a result for a
  task of another endpoint, or an unknown one, is ignored. On SQLite (in-process, no round trips)
  one `SELECT ... IN` per 900 ids finds the tasks still waiting on the endpoint that sent them and
  one executemany `UPDATE` with the same guard stores them (`sqlite_batches`); on PostgreSQL one
  `UPDATE ... FROM unnest(<arrays>) ... RETURNING` per 5,000 results does both (`postgres_batches`).
- `pending_heads` / `cancel`: a user cancelling their own unfinished tasks; one guarded
  `UPDATE ... RETURNING` per chunk decides, so a result stored concurrently and a cancel cannot both
  win (the first outcome wins; `cancelled` is terminal, later results are ignored like duplicates).
- `fail` / `fail_endpoint`: the same rules for failures the forwarder decides (dead letters,
  deleted endpoints), on the portable SQLAlchemy Core path.
- large results (above `blob_threshold_bytes`) go to the blob store (`forwarder/blobs/`) before
  the transaction; the row keeps the blob's name, size and sha256 (`result` is NULL). A blob whose
  row update lost (a duplicate, another replica first) or whose transaction failed is deleted; a
  blob is deleted after the transaction that deletes its task. Reads load and check the blob: one
  that is missing or does not match its digest turns that record (not the row) into a failure
  `RESULT_INTEGRITY` naming the task, so every reader reports it the same typed way.
- reads fetch many tasks by id in chunks; `list_page` lists an owner's tasks newest first,
  keyset-paginated on (created_at, task_id) along the index `ix_tasks_owner_created`.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    bindparam,
    func,
    or_,
    select,
)

from taskfabric.errors import ErrorCode
from taskfabric.forwarder.blobs import (
    BlobError,
    BlobIntegrityError,
    BlobMissing,
    BlobRef,
    BlobStore,
    blob_name,
    read_verified,
)
from taskfabric.forwarder.records import NewTask, TaskActivity, TaskPage, TaskQuery, TaskRecord, TaskStatus, TaskSummary
from taskfabric.forwarder.store import postgres_batches, sqlite_batches
from taskfabric.forwarder.store._sql import statement_chunks
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.outcomes import (
    OUTCOME_FIELDS,
    Failure,
    Outcome,
    finished,
    outcome_of_failure,
    outcome_of_result,
)
from taskfabric.forwarder.store.schema import endpoints, tasks
from taskfabric.protocol import Result, TaskStarted

__all__ = ["Failure", "TaskTable"]

log = logging.getLogger(__name__)

_WAITING = TaskStatus.WAITING.value
_RUNNING = TaskStatus.RUNNING.value
#: the states in which a task may still start, finish, fail or be cancelled
_PENDING = [status.value for status in TaskStatus if status.pending]
_ATTEMPTS_MAX = 2**31 - 1
#: results larger than this go to the blob store (when the table has one)
DEFAULT_BLOB_THRESHOLD_BYTES = 64 * 1024

_KEEP_BLOB = (
    tasks.update()
    .where(tasks.c.task_id == bindparam("b_task_id"))
    .values(
        result=None,
        result_blob=bindparam("b_blob"),
        result_size=bindparam("b_size"),
        result_sha256=bindparam("b_sha256"),
    )
)


@dataclasses.dataclass(slots=True)
class _Spilled:
    """A result written to the blob store before its row is updated."""

    ref: BlobRef
    data: bytes | None  # None: the worker uploaded it (the forwarder never held the bytes)
    kept: bool = False


#: the columns needed to describe a task without its outcome
_HEAD = [
    tasks.c.task_id,
    tasks.c.owner_id,
    tasks.c.endpoint_id,
    tasks.c.function_id,
    tasks.c.created_at,
    tasks.c.client_python,
    tasks.c.task_group_id,
]

_FINISH = (
    tasks.update()
    .where(
        tasks.c.task_id == bindparam("b_task_id"),
        tasks.c.endpoint_id == bindparam("b_endpoint_id"),
        or_(*(tasks.c.status == status for status in _PENDING)),  # no IN: executemany takes no expanding list
    )
    .values({name: bindparam(f"b_{name}") for name in OUTCOME_FIELDS if name != "endpoint_id"})
)

_START = (
    tasks.update()
    .where(
        tasks.c.task_id == bindparam("b_task_id"),
        tasks.c.endpoint_id == bindparam("b_endpoint_id"),
        or_(
            tasks.c.status == _WAITING,
            and_(tasks.c.status == _RUNNING, tasks.c.attempts < bindparam("b_attempts")),
        ),
    )
    .values(status=_RUNNING, started_at=bindparam("b_started_at"), attempts=bindparam("b_attempts"))
)


class TaskTable:
    """Batch reads and writes of `tasks`."""

    def __init__(
        self,
        engine: Engine,
        *,
        blobs: BlobStore | None = None,
        blob_threshold_bytes: int = DEFAULT_BLOB_THRESHOLD_BYTES,
    ) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self.blobs = blobs
        self._blob_threshold_bytes = blob_threshold_bytes

    # --- submission ---------------------------------------------------------------------

    def insert(
        self,
        *,
        owner_id: uuid.UUID,
        endpoint_id: uuid.UUID,
        client_python: str,
        new_tasks: Sequence[NewTask],
        created_at: float,
        task_group_id: uuid.UUID | None = None,
    ) -> None:
        """Store a submitted batch as `waiting` tasks (one executemany, one transaction)."""
        with translate_errors("storing submitted tasks"), self._engine.begin() as connection:
            fast = {"sqlite": sqlite_batches.insert_waiting, "postgresql": postgres_batches.insert_waiting}
            insert = fast.get(connection.dialect.name)
            if insert is not None:
                insert(
                    connection,
                    owner_id=owner_id,
                    endpoint_id=endpoint_id,
                    client_python=client_python,
                    new_tasks=new_tasks,
                    created_at=created_at,
                    task_group_id=task_group_id,
                )
                return
            rows = [
                {
                    "task_id": task.task_id,
                    "owner_id": owner_id,
                    "endpoint_id": endpoint_id,
                    "function_id": task.function_id,
                    "status": _WAITING,
                    "created_at": created_at,
                    "client_python": client_python,
                    "attempts": 0,
                    "task_group_id": task_group_id,
                }
                for task in new_tasks
            ]
            connection.execute(tasks.insert(), rows)

    def delete(self, task_ids: Sequence[uuid.UUID]) -> None:
        """Remove tasks (a submission whose publish failed: it was never accepted), and their blobs."""
        names: list[str] = []
        with translate_errors("withdrawing tasks"), self._engine.begin() as connection:
            for chunk in statement_chunks(task_ids):
                names.extend(_blob_names(connection, tasks.c.task_id.in_(chunk)))
                connection.execute(tasks.delete().where(tasks.c.task_id.in_(chunk)))
        self._delete_blobs(names)

    # --- progress -----------------------------------------------------------------------

    def mark_started(self, batches: Sequence[tuple[uuid.UUID, Sequence[TaskStarted]]]) -> None:
        """Record task starts reported by endpoints: (endpoint id, its starts) per broker message.
        Moves `waiting` -> `running`, or a `running` task to a later attempt (see the module docstring)."""
        latest: dict[uuid.UUID, tuple[uuid.UUID, TaskStarted]] = {}
        for endpoint_id, started in batches:
            for event in started:
                seen = latest.get(event.task_id)
                if seen is None or event.attempt > seen[1].attempt:
                    latest[event.task_id] = (endpoint_id, event)
        if not latest:
            return
        params = [
            {
                "b_task_id": task_id,
                "b_endpoint_id": endpoint_id,
                "b_started_at": event.started_at,
                "b_attempts": max(1, min(_ATTEMPTS_MAX, event.attempt)),
            }
            for task_id, (endpoint_id, event) in latest.items()
        ]
        with translate_errors("recording task starts"), self._engine.begin() as connection:
            connection.execute(_START, params)

    # --- outcomes -----------------------------------------------------------------------

    def store_results(self, batches: Sequence[tuple[uuid.UUID, Sequence[Result]]], *, now: float) -> list[TaskRecord]:
        """Store results reported by endpoints: (endpoint id, its results) per broker message.
        Returns the tasks this call finished (not the duplicates or the ignored ones).

        The first outcome per task and endpoint counts. A task claimed by several endpoints in one
        call (another endpoint reporting a task that is not its own, beside the genuine result) is
        stored in rounds, so a wrong claim that comes first cannot hide the right one."""
        rounds = _outcome_rounds(batches, now)
        if not rounds:
            return []
        spilled = self._spill(rounds)
        done: list[TaskRecord] = []
        try:
            with translate_errors("storing results"), self._engine.begin() as connection:
                for outcomes in rounds:
                    stored = self._finish_pending(connection, outcomes)
                    if spilled:
                        _keep_blobs(connection, stored, outcomes, spilled)
                    done.extend(stored)
        except BaseException:
            # an uploaded blob stays: the result's delivery comes back and names it again (the
            # expiry sweep removes it if it never does)
            self._delete_blobs([blob.ref.name for blob in spilled.values() if blob.data is not None])
            raise
        # an uploaded blob not kept is left to the expiry sweep: a redelivered result names the
        # blob its first delivery already recorded, which must not be deleted
        self._delete_blobs([blob.ref.name for blob in spilled.values() if not blob.kept and blob.data is not None])
        claimed = sum(len(outcomes) for outcomes in rounds)
        ignored = claimed - len(done)
        if ignored:
            log.debug("ignored %d results (duplicate, unknown or another endpoint's task)", ignored)
        return done

    def _spill(self, rounds: list[dict[uuid.UUID, Outcome]]) -> dict[int, _Spilled]:
        """Write the large results to the blob store; their outcomes then carry no bytes.
        Keyed by the outcome's identity (one task may have outcomes from several endpoints)."""
        spilled: dict[int, _Spilled] = {}
        if self.blobs is None:
            return spilled
        try:
            for outcomes in rounds:
                for task_id, outcome in outcomes.items():
                    if outcome.blob is not None:
                        spilled[id(outcome)] = _Spilled(ref=outcome.blob, data=None)
                        continue
                    data = outcome.result
                    if data is not None and len(data) > self._blob_threshold_bytes:
                        ref = self.blobs.put(blob_name(task_id), data)
                        spilled[id(outcome)] = _Spilled(ref=ref, data=data)
                        outcome.result = None
        except BaseException:
            self._delete_blobs([blob.ref.name for blob in spilled.values() if blob.data is not None])
            raise
        return spilled

    def _delete_blobs(self, names: list[str]) -> None:
        """Best effort, after the rows changed: a blob left behind is swept once it is older than
        `result_ttl_s` (`sweep_blobs`), so a failure here must not undo a committed change."""
        if not names or self.blobs is None:
            return
        try:
            self.blobs.delete(names)
        except BlobError as exc:
            log.warning("could not delete %d blobs (the expiry sweep will): %s", len(names), exc)

    def _finish_pending(self, connection: Connection, outcomes: dict[uuid.UUID, Outcome]) -> list[TaskRecord]:
        """Store the outcomes of tasks still pending on the endpoint that claims each."""
        if self._sqlite:
            return sqlite_batches.finish_waiting(connection, outcomes)
        if connection.dialect.name == "postgresql":
            return postgres_batches.finish_waiting(connection, outcomes)
        heads = _waiting_heads(connection, list(outcomes))
        mine = {task_id: head for task_id, head in heads.items() if head.endpoint_id == outcomes[task_id].endpoint_id}
        return _finish_known(connection, mine, outcomes)

    def fail(
        self,
        task_ids: Iterable[uuid.UUID],
        failure: Failure,
        *,
        now: float,
        endpoint_id: uuid.UUID | None = None,
    ) -> list[TaskRecord]:
        """Fail the given tasks that are still pending (only `endpoint_id`'s, when given)."""
        ids = list(dict.fromkeys(task_ids))
        with translate_errors("failing tasks"), self._engine.begin() as connection:
            heads = _waiting_heads(connection, ids)
            if endpoint_id is not None:
                heads = {task_id: head for task_id, head in heads.items() if head.endpoint_id == endpoint_id}
            outcomes = {task_id: outcome_of_failure(head.endpoint_id, failure, now) for task_id, head in heads.items()}
            return _finish_known(connection, heads, outcomes)

    def fail_endpoint(self, endpoint_id: uuid.UUID, failure: Failure, *, now: float) -> list[TaskRecord]:
        """Fail every pending task of an endpoint (it is being deleted)."""
        query = select(*_HEAD).where(tasks.c.endpoint_id == endpoint_id, tasks.c.status.in_(_PENDING))
        with translate_errors("failing an endpoint's tasks"), self._engine.begin() as connection:
            heads = {row.task_id: _head(row) for row in connection.execute(query)}
            outcomes = {task_id: outcome_of_failure(endpoint_id, failure, now) for task_id in heads}
            return _finish_known(connection, heads, outcomes)

    def fail_owner(self, owner_id: uuid.UUID, failure: Failure, *, now: float) -> list[TaskRecord]:
        """Fail every pending task of a user (an administrator deleted or disabled it): the same
        path as `fail_endpoint`, selected by owner."""
        query = select(*_HEAD).where(tasks.c.owner_id == owner_id, tasks.c.status.in_(_PENDING))
        with translate_errors("failing a user's tasks"), self._engine.begin() as connection:
            heads = {row.task_id: _head(row) for row in connection.execute(query)}
            outcomes = {task_id: outcome_of_failure(head.endpoint_id, failure, now) for task_id, head in heads.items()}
            return _finish_known(connection, heads, outcomes)

    def fail_lost_in_rebuilt_queue(
        self, endpoint_id: uuid.UUID, *, held: set[uuid.UUID], inventory_at: float, now: float
    ) -> list[TaskRecord]:
        """After the endpoint's task queue was rebuilt (forwarder/queue_health.py), its agent
        reported the tasks it holds: fail the endpoint's tasks submitted before the rebuild that are
        still waiting and that the agent does not hold (they were in the lost queue)."""
        with translate_errors("failing tasks of a rebuilt queue"), self._engine.begin() as connection:
            rebuilt_at = connection.execute(
                select(endpoints.c.queue_rebuilt_at).where(endpoints.c.endpoint_id == endpoint_id)
            ).scalar()
            if rebuilt_at is None or inventory_at < rebuilt_at:
                return []
            query = select(*_HEAD).where(
                tasks.c.endpoint_id == endpoint_id, tasks.c.status == _WAITING, tasks.c.created_at < rebuilt_at
            )
            heads = {row.task_id: _head(row) for row in connection.execute(query) if row.task_id not in held}
            failure = Failure(
                ErrorCode.TASK_QUEUE_LOST,
                "the endpoint's task queue was destroyed by a broker crash before its agent took this task; "
                "submit it again",
            )
            outcomes = {task_id: outcome_of_failure(endpoint_id, failure, now) for task_id in heads}
            connection.execute(
                endpoints.update().where(endpoints.c.endpoint_id == endpoint_id).values(queue_rebuilt_at=None)
            )
            return _finish_known(connection, heads, outcomes)

    # --- cancellation -------------------------------------------------------------------

    def pending_heads(self, owner_id: uuid.UUID, task_ids: Sequence[uuid.UUID]) -> list[TaskRecord]:
        """The owner's tasks among `task_ids` that have not finished (identity columns only)."""
        heads: list[TaskRecord] = []
        with translate_errors("reading tasks to cancel"), self._engine.connect() as connection:
            for chunk in statement_chunks(list(dict.fromkeys(task_ids))):
                query = select(*_HEAD).where(
                    tasks.c.task_id.in_(chunk), tasks.c.owner_id == owner_id, tasks.c.status.in_(_PENDING)
                )
                heads.extend(_head(row) for row in connection.execute(query))
        return heads

    def cancel(self, owner_id: uuid.UUID, task_ids: Sequence[uuid.UUID], *, now: float) -> list[TaskRecord]:
        """Move the owner's unfinished tasks among `task_ids` to `cancelled` (finished at `now`);
        returns those this call moved. Finished, unknown and other users' tasks are left alone."""
        message = "cancelled by its owner"
        values = {
            "status": TaskStatus.CANCELLED.value,
            "cancel_requested_at": now,
            "completed_at": now,
            "error_code": ErrorCode.TASK_CANCELLED.value,
            "error_message": message,
            "error_traceback": "",
            "error_exception_type": "",
        }
        moved: list[TaskRecord] = []
        with translate_errors("cancelling tasks"), self._engine.begin() as connection:
            for chunk in statement_chunks(list(dict.fromkeys(task_ids))):
                statement = (
                    tasks.update()
                    .where(tasks.c.task_id.in_(chunk), tasks.c.owner_id == owner_id, tasks.c.status.in_(_PENDING))
                    .values(values)
                    .returning(*_HEAD)
                )
                for row in connection.execute(statement):
                    record = _head(row)
                    record.status = TaskStatus.CANCELLED
                    record.completed_at = now
                    record.error_code = ErrorCode.TASK_CANCELLED.value
                    record.error_message = message
                    record.error_traceback = ""
                    record.error_exception_type = ""
                    moved.append(record)
        return moved

    # --- reads --------------------------------------------------------------------------

    def get_many(
        self, task_ids: Sequence[uuid.UUID], *, results: bool = True, result_budget_bytes: int | None = None
    ) -> dict[uuid.UUID, TaskRecord]:
        """The stored tasks among `task_ids` (chunked `IN` lists, one connection). A result kept
        in the blob store is loaded and checked (`results=False`: left out, for callers that
        only need the task's identity and state, or send it by reference: `result_sha256` and
        `result_size` name it). With `result_budget_bytes`, such results are loaded only while
        their sizes add up to at most that; the others are left out."""
        found: dict[uuid.UUID, TaskRecord] = {}
        in_blobs: list[tuple[TaskRecord, BlobRef]] = []
        with translate_errors("reading tasks"), self._engine.connect() as connection:
            for chunk in statement_chunks(task_ids):
                for row in connection.execute(select(tasks).where(tasks.c.task_id.in_(chunk))):
                    record = found[row.task_id] = _task(row)
                    if results and (ref := record.blob_ref()) is not None:
                        in_blobs.append((record, ref))
        budget = result_budget_bytes
        for record, ref in in_blobs:  # outside the connection: reading a blob may take a while
            if budget is not None:
                if ref.size > budget:
                    continue
                budget -= ref.size
            self._load_blob(record, ref)
        return found

    def check_blob(self, ref: BlobRef) -> None:
        """Read the blob through once, chunk by chunk (no whole copy), checking its size and
        digest: raises `BlobIntegrityError`, `BlobMissing` (or `BlobError` without a blob store)."""
        for _ in self.blob_chunks(ref):
            pass

    def read_blob(self, ref: BlobRef) -> bytes:
        """The whole blob, checked (raises `BlobIntegrityError`, `BlobMissing`, `BlobError`)."""
        if self.blobs is None:
            raise BlobError("the forwarder has no blob store configured")
        return read_verified(self.blobs, ref)

    def blob_chunks(self, ref: BlobRef) -> Iterator[bytes]:
        """The blob's chunks, checked at the end (see `BlobStore.stream_verified`)."""
        if self.blobs is None:
            raise BlobError("the forwarder has no blob store configured")
        return self.blobs.stream_verified(ref)

    def _load_blob(self, record: TaskRecord, ref: BlobRef) -> None:
        """Put the blob's bytes in `record`, or turn it into a `RESULT_INTEGRITY` failure."""
        if self.blobs is None:
            problem = "the forwarder has no blob store configured"
        else:
            try:
                record.result = read_verified(self.blobs, ref)
                return
            except BlobIntegrityError:
                problem = "its bytes do not match the sha256 digest recorded with the task"
            except BlobMissing:
                problem = "it is missing from the blob store"
        log.error("result of task %s (blob %s) is unusable: %s", record.task_id, ref.name, problem)
        record.status = TaskStatus.FAILED
        record.result = None
        record.error_code = ErrorCode.RESULT_INTEGRITY.value
        record.error_message = f"the result of task {record.task_id} failed its integrity check: {problem}"
        record.error_traceback = ""
        record.error_exception_type = ""
        record.error_exception = None

    def list_page(self, query: TaskQuery) -> TaskPage:
        """One page of the owner's tasks matching `query`, newest first (no result bytes)."""
        statement = (
            select(*_SUMMARY)
            .where(*_listing_filters(query))
            .order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc())
            .limit(query.limit + 1)  # one more tells whether another page follows
        )
        with translate_errors("listing tasks"), self._engine.connect() as connection:
            found = [_summary(row) for row in connection.execute(statement)]
        page = found[: query.limit]
        more = len(found) > query.limit
        return TaskPage(tasks=page, next_after=page[-1].key if more and page else None)

    def finished_since(self, owner_id: uuid.UUID, since: float) -> list[uuid.UUID]:
        """Ids of the owner's tasks finished at or after `since` (results streams poll this)."""
        query = select(tasks.c.task_id).where(tasks.c.completed_at >= since, tasks.c.owner_id == owner_id)
        with translate_errors("polling finished tasks"), self._engine.connect() as connection:
            return [row.task_id for row in connection.execute(query)]

    def finished_since_hex(self, owner_id: uuid.UUID, since: float) -> list[str]:
        """`finished_since` as 32-digit hex strings, without building a UUID per row (results
        streams poll this every few seconds, over every task finished meanwhile)."""
        return [
            task_id.replace("-", "") if len(task_id) == 36 else task_id
            for task_id in self._finished_raw(owner_id, since)
        ]

    def _finished_raw(self, owner_id: uuid.UUID, since: float) -> list[str]:
        if self._sqlite:
            query = "SELECT task_id FROM tasks WHERE completed_at >= ? AND owner_id = ?"
            with translate_errors("polling finished tasks"), self._engine.connect() as connection:
                return [row[0] for row in connection.exec_driver_sql(query, (since, owner_id.hex))]
        return [task_id.hex for task_id in self.finished_since(owner_id, since)]

    def delete_expired(self, before: float, *, limit: int = 5000) -> int:
        """Delete up to `limit` tasks finished before `before`; returns how many."""
        query = select(tasks.c.task_id, tasks.c.result_blob).where(tasks.c.completed_at < before).limit(limit)
        with translate_errors("deleting expired tasks"), self._engine.begin() as connection:
            rows = connection.execute(query).all()
            ids = [row.task_id for row in rows]
            for chunk in statement_chunks(ids):
                connection.execute(tasks.delete().where(tasks.c.task_id.in_(chunk)))
        self._delete_blobs([row.result_blob for row in rows if row.result_blob is not None])
        return len(ids)

    def sweep_blobs(self, before: float) -> int:
        """Delete blobs written before `before` that no deletion reached (a crash between the
        blob write and its row): run after `delete_expired` with the same time. Returns how many."""
        return self.blobs.sweep(before) if self.blobs is not None else 0

    def count(self, *, status: TaskStatus | None = None, owner_id: uuid.UUID | None = None) -> int:
        """How many tasks there are (of this owner, with this status): for operators and tests."""
        query = select(func.count()).select_from(tasks)
        if owner_id is not None:
            query = query.where(tasks.c.owner_id == owner_id)
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        with translate_errors("counting tasks"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def pending_counts(self) -> dict[tuple[uuid.UUID, TaskStatus], int]:
        """How many unfinished tasks each endpoint has, by status (one query: for /metrics).
        Unfinished tasks are those without `completed_at`: `ix_tasks_completed_at` finds them
        without reading the finished ones."""
        pending = [status.value for status in TaskStatus if status.pending]
        query = (
            select(tasks.c.endpoint_id, tasks.c.status, func.count())
            .where(tasks.c.completed_at.is_(None), tasks.c.status.in_(pending))
            .group_by(tasks.c.endpoint_id, tasks.c.status)
        )
        with translate_errors("counting unfinished tasks"), self._engine.connect() as connection:
            return {(row[0], TaskStatus(row[1])): int(row[2]) for row in connection.execute(query)}

    def unfinished_counts(self, owner_id: uuid.UUID) -> dict[tuple[uuid.UUID, TaskStatus], int]:
        """How many unfinished tasks the owner has per (endpoint, state): a walk of the owner's
        tasks along `ix_tasks_owner_created` (the costly part of `GET /v1/activity`; the task
        service caches it briefly)."""
        with translate_errors("counting unfinished tasks"), self._engine.connect() as connection:
            rows = connection.execute(_unfinished_by_state(owner_id))
            return {(row[0], TaskStatus(row[1])): int(row[2]) for row in rows}

    def activity(self, owner_id: uuid.UUID, *, since: float, failures: int, failures_since: float) -> TaskActivity:
        """The owner's tasks finished at or after `since` per (endpoint, state), and the newest
        `failures` failed tasks finished at or after `failures_since` among the owner's
        `ACTIVITY_SCAN_TASKS` newest tasks (a bounded read however many tasks the owner has).
        Unfinished tasks are `unfinished_counts`'."""
        with translate_errors("reading task activity"), self._engine.connect() as connection:
            counts = self._finished_by_state(connection, owner_id, since)
            recent = _recent_failures(owner_id, failures, failures_since) if failures > 0 else None
            found = [_summary(row) for row in connection.execute(recent)] if recent is not None else []
        return TaskActivity(counts=counts, failures=found)

    def _finished_by_state(
        self, connection: Connection, owner_id: uuid.UUID, since: float
    ) -> dict[tuple[uuid.UUID, TaskStatus], int]:
        """The owner's tasks finished at or after `since`, counted per (endpoint, state), found
        along `ix_tasks_completed_at` from `since` on: a short window reads only the tasks
        finished fabric-wide within it. SQLite's planner, without statistics, would rather walk
        the owner's whole listing index (an equality beats a range), so there the index is named
        (`INDEXED BY`, which SQLAlchemy cannot say); PostgreSQL's planner decides from statistics."""
        if not self._sqlite:
            statement = (
                select(tasks.c.endpoint_id, tasks.c.status, func.count())
                .where(tasks.c.completed_at >= since, tasks.c.owner_id == owner_id)
                .group_by(tasks.c.endpoint_id, tasks.c.status)
            )
            return {(row[0], TaskStatus(row[1])): int(row[2]) for row in connection.execute(statement)}
        query = (
            "SELECT endpoint_id, status, count(*) FROM tasks INDEXED BY ix_tasks_completed_at"
            " WHERE completed_at >= ? AND owner_id = ? GROUP BY endpoint_id, status"
        )
        rows = connection.exec_driver_sql(query, (since, owner_id.hex))
        return {(uuid.UUID(row[0]), TaskStatus(row[1])): int(row[2]) for row in rows}


#: how many of an owner's newest tasks `TaskTable.activity` looks through for recent failures
ACTIVITY_SCAN_TASKS = 10_000


def _unfinished_by_state(owner_id: uuid.UUID) -> Select[Any]:
    pending = [status.value for status in TaskStatus if status.pending]
    by_state = (tasks.c.endpoint_id, tasks.c.status)
    return (
        select(*by_state, func.count())
        .where(tasks.c.owner_id == owner_id, tasks.c.completed_at.is_(None), tasks.c.status.in_(pending))
        .group_by(*by_state)
    )


def _recent_failures(owner_id: uuid.UUID, limit: int, since: float) -> Select[Any]:
    """The newest failed tasks finished since `since` among the owner's newest
    `ACTIVITY_SCAN_TASKS` tasks (a bounded walk of `ix_tasks_owner_created`, reading each row once)."""
    newest = (
        select(*_SUMMARY)
        .where(tasks.c.owner_id == owner_id)
        .order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc())
        .limit(ACTIVITY_SCAN_TASKS)
        .subquery()
    )
    return (
        select(*newest.c)
        .where(newest.c.status == TaskStatus.FAILED.value, newest.c.completed_at >= since)
        .order_by(newest.c.completed_at.desc(), newest.c.task_id.desc())
        .limit(limit)
    )


# --- listings -----------------------------------------------------------------------------

_SUMMARY = [
    tasks.c.task_id,
    tasks.c.owner_id,
    tasks.c.status,
    tasks.c.endpoint_id,
    tasks.c.function_id,
    tasks.c.task_group_id,
    tasks.c.created_at,
    tasks.c.started_at,
    tasks.c.completed_at,
    tasks.c.error_code,
]


def _listing_filters(query: TaskQuery) -> list[ColumnElement[bool]]:
    """The WHERE terms of a listing: the owner (unless every user's tasks on one endpoint), then
    each filter given, then the keyset."""
    terms: list[ColumnElement[bool]] = []
    if not query.all_users or query.endpoint_id is None:
        terms.append(tasks.c.owner_id == query.owner_id)
    if query.status is not None:
        terms.append(tasks.c.status == query.status.value)
    if query.endpoint_id is not None:
        terms.append(tasks.c.endpoint_id == query.endpoint_id)
    if query.function_id is not None:
        terms.append(tasks.c.function_id == query.function_id)
    if query.task_group_id is not None:
        terms.append(tasks.c.task_group_id == query.task_group_id)
    if query.since is not None:
        terms.append(tasks.c.created_at >= query.since)
    if query.after is not None:
        created_at, task_id = query.after
        # the plain bound lets both planners start the index scan at the cursor; the OR is exact
        terms.append(tasks.c.created_at <= created_at)
        terms.append(
            or_(tasks.c.created_at < created_at, and_(tasks.c.created_at == created_at, tasks.c.task_id < task_id))
        )
    return terms


def _summary(row: Row[Any]) -> TaskSummary:
    return TaskSummary(
        task_id=row.task_id,
        status=TaskStatus(row.status),
        endpoint_id=row.endpoint_id,
        function_id=row.function_id,
        task_group_id=row.task_group_id,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        error_code=row.error_code,
        owner_id=row.owner_id,
    )


# --- the portable path --------------------------------------------------------------------


def _waiting_heads(connection: Connection, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, TaskRecord]:
    heads: dict[uuid.UUID, TaskRecord] = {}
    for chunk in statement_chunks(task_ids):
        query = select(*_HEAD).where(tasks.c.task_id.in_(chunk), tasks.c.status.in_(_PENDING))
        for row in connection.execute(query):
            heads[row.task_id] = _head(row)
    return heads


def _outcome_rounds(
    batches: Sequence[tuple[uuid.UUID, Sequence[Result]]], now: float
) -> list[dict[uuid.UUID, Outcome]]:
    """The outcomes to store, by task id, in as many rounds as some task has claiming endpoints
    (almost always one): the first outcome per task and endpoint, in the order they came."""
    rounds: list[dict[uuid.UUID, Outcome]] = []
    for endpoint_id, results in batches:
        for result in results:
            task_id = result.task_id
            for outcomes in rounds:
                known = outcomes.get(task_id)
                if known is None:
                    outcomes[task_id] = outcome_of_result(endpoint_id, result, now)
                    break
                if known.endpoint_id == endpoint_id:
                    break  # a duplicate from the same endpoint: the first one counts
            else:
                rounds.append({task_id: outcome_of_result(endpoint_id, result, now)})
    return rounds


def _keep_blobs(
    connection: Connection,
    stored: list[TaskRecord],
    outcomes: dict[uuid.UUID, Outcome],
    spilled: dict[int, _Spilled],
) -> None:
    """Record the blob of each stored result that was spilled; the returned records keep the
    bytes (the results stream sends them without reading the blob back)."""
    params = []
    for record in stored:
        blob = spilled.get(id(outcomes[record.task_id]))
        if blob is None:
            continue
        blob.kept = True
        record.result = blob.data
        record.result_size = blob.ref.size
        if blob.data is None:
            record.result_sha256 = blob.ref.sha256
            record.result_blob = blob.ref.name
        params.append(
            {"b_task_id": record.task_id, "b_blob": blob.ref.name, "b_size": blob.ref.size, "b_sha256": blob.ref.sha256}
        )
    if params:
        connection.execute(_KEEP_BLOB, params)


def _blob_names(connection: Connection, where: ColumnElement[bool]) -> list[str]:
    query = select(tasks.c.result_blob).where(where, tasks.c.result_blob.is_not(None))
    return [row.result_blob for row in connection.execute(query)]


def _finish_known(
    connection: Connection, heads: dict[uuid.UUID, TaskRecord], outcomes: dict[uuid.UUID, Outcome]
) -> list[TaskRecord]:
    """Store the outcomes of tasks known to be pending (with the same guard, for races)."""
    if not heads:
        return []
    connection.execute(_FINISH, [_finish_params(task_id, outcomes[task_id]) for task_id in heads])
    return [
        finished(
            task_id,
            outcomes[task_id],
            owner_id=head.owner_id,
            function_id=head.function_id,
            created_at=head.created_at,
            client_python=head.client_python,
            task_group_id=head.task_group_id,
        )
        for task_id, head in heads.items()
    ]


def _finish_params(task_id: uuid.UUID, outcome: Outcome) -> dict[str, Any]:
    params = {f"b_{name}": getattr(outcome, name) for name in OUTCOME_FIELDS}
    params["b_status"] = outcome.status.value
    params["b_task_id"] = task_id
    return params


def _head(row: Row[Any]) -> TaskRecord:
    """A pending task from the `_HEAD` columns (its outcome is all that `finished` needs of it)."""
    return TaskRecord(
        task_id=row.task_id,
        owner_id=row.owner_id,
        endpoint_id=row.endpoint_id,
        function_id=row.function_id,
        status=TaskStatus.WAITING,
        created_at=row.created_at,
        client_python=row.client_python or "",
        task_group_id=row.task_group_id,
    )


def _task(row: Row[Any]) -> TaskRecord:
    """A task from all its columns."""
    return TaskRecord(
        task_id=row.task_id,
        owner_id=row.owner_id,
        endpoint_id=row.endpoint_id,
        function_id=row.function_id,
        status=TaskStatus(row.status),
        created_at=row.created_at,
        completed_at=row.completed_at,
        result=bytes(row.result) if row.result is not None else None,
        error_code=row.error_code,
        error_message=row.error_message,
        error_traceback=row.error_traceback,
        error_exception_type=row.error_exception_type,
        error_exception=bytes(row.error_exception) if row.error_exception is not None else None,
        client_python=row.client_python or "",
        worker_python=row.worker_python or "",
        received_at=row.received_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=row.attempts or 0,
        task_group_id=row.task_group_id,
        stdout=row.stdout,
        stderr=row.stderr,
        result_size=row.result_size if row.result_blob is not None else None,
        result_sha256=row.result_sha256 if row.result_blob is not None else None,
        result_blob=row.result_blob,
    )
