"""Dead letters kept for operators (`taskfabric admin dead-letters`): written by the ingest thread,
read, deleted and purged by the admin functions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Row, select

from taskfabric.forwarder.records import DeadLetterRecord
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import dead_letters

__all__ = ["DeadLetterTable"]

_LISTED = [column for column in dead_letters.c if column.name != "body"]


class DeadLetterTable:
    """Reads and writes of `dead_letters`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, records: Sequence[DeadLetterRecord]) -> None:
        """Keep dead letters (one transaction)."""
        if not records:
            return
        rows = [
            {
                "dead_letter_id": record.dead_letter_id,
                "task_id": record.task_id,
                "endpoint_id": record.endpoint_id,
                "owner_id": record.owner_id,
                "reason": record.reason,
                "deliveries": record.deliveries,
                "queue": record.queue,
                "body": record.body or b"",
                "created_at": record.created_at,
            }
            for record in records
        ]
        with translate_errors("keeping dead letters"), self._engine.begin() as connection:
            connection.execute(dead_letters.insert(), rows)

    def list(self, *, limit: int = 100, task_id: uuid.UUID | None = None) -> list[DeadLetterRecord]:
        """The newest kept dead letters first (without bodies), of one task if `task_id` is given."""
        query = select(*_LISTED).order_by(dead_letters.c.created_at.desc(), dead_letters.c.dead_letter_id).limit(limit)
        if task_id is not None:
            query = query.where(dead_letters.c.task_id == task_id)
        with translate_errors("listing dead letters"), self._engine.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    def get(self, dead_letter_id: uuid.UUID) -> DeadLetterRecord | None:
        """One kept dead letter with its body."""
        query = select(dead_letters).where(dead_letters.c.dead_letter_id == dead_letter_id)
        with translate_errors("reading a dead letter"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        return _record(row) if row is not None else None

    def delete(self, dead_letter_id: uuid.UUID) -> bool:
        with translate_errors("deleting a dead letter"), self._engine.begin() as connection:
            deleted = connection.execute(dead_letters.delete().where(dead_letters.c.dead_letter_id == dead_letter_id))
        return bool(deleted.rowcount)

    def purge(self, *, before: float | None = None) -> int:
        """Delete the dead letters kept before `before` (all of them if None); returns how many."""
        statement = dead_letters.delete()
        if before is not None:
            statement = statement.where(dead_letters.c.created_at < before)
        with translate_errors("purging dead letters"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount or 0)


def _record(row: Row[Any]) -> DeadLetterRecord:
    mapping = row._mapping
    body = mapping.get("body")
    return DeadLetterRecord(
        dead_letter_id=mapping["dead_letter_id"],
        task_id=mapping["task_id"],
        endpoint_id=mapping["endpoint_id"],
        owner_id=mapping["owner_id"],
        reason=mapping["reason"],
        deliveries=mapping["deliveries"],
        queue=mapping["queue"],
        created_at=mapping["created_at"],
        body=bytes(body) if body is not None else None,
    )
