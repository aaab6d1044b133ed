"""What the per-user quotas read and count: a user's unfinished tasks, their endpoints, and the
result bytes stored for them per UTC day (`forwarder/quotas.py` decides; this only counts)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import endpoints, result_bytes_daily, tasks

__all__ = ["QuotaTable"]


class QuotaTable:
    """Counts behind the quotas (one small query each)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def pending_tasks(self, owner_id: uuid.UUID) -> int:
        """The owner's unfinished tasks (waiting or running): `ix_tasks_owner_completed` finds them
        without reading finished ones."""
        query = (
            select(func.count()).select_from(tasks).where(tasks.c.owner_id == owner_id, tasks.c.completed_at.is_(None))
        )
        with translate_errors("counting a user's unfinished tasks"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def endpoints(self, owner_id: uuid.UUID) -> int:
        """How many endpoints the owner has registered."""
        query = select(func.count()).select_from(endpoints).where(endpoints.c.owner_id == owner_id)
        with translate_errors("counting a user's endpoints"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def result_bytes(self, owner_id: uuid.UUID, day: int) -> int:
        """Result bytes stored for the owner on `day` (days since the epoch, UTC)."""
        query = select(result_bytes_daily.c.result_bytes).where(
            result_bytes_daily.c.owner_id == owner_id, result_bytes_daily.c.day == day
        )
        with translate_errors("reading a user's result bytes"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    def add_result_bytes(self, by_owner: Mapping[uuid.UUID, int], day: int) -> None:
        """Add to each owner's count of `day` (an upsert: replicas may add at once)."""
        rows = [{"owner_id": owner, "day": day, "result_bytes": size} for owner, size in by_owner.items() if size > 0]
        if not rows:
            return
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(result_bytes_daily)
        statement = insert.on_conflict_do_update(
            index_elements=[result_bytes_daily.c.owner_id, result_bytes_daily.c.day],
            set_={"result_bytes": result_bytes_daily.c.result_bytes + insert.excluded.result_bytes},
        )
        with translate_errors("counting result bytes"), self._engine.begin() as connection:
            for row in sorted(rows, key=lambda row: str(row["owner_id"])):  # one lock order: no deadlocks
                connection.execute(statement, row)

    def prune_result_bytes(self, before_day: int) -> int:
        """Forget the counts of days before `before_day`."""
        with translate_errors("pruning result byte counts"), self._engine.begin() as connection:
            deleted = connection.execute(result_bytes_daily.delete().where(result_bytes_daily.c.day < before_day))
            return int(deleted.rowcount or 0)
