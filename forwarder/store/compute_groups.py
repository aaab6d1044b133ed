"""Globus Compute task groups that have a result queue: which user owns the group and the AMQP queue
its results are published to (see `forwarder/globus_compute/`). Kept in the store, not in one
forwarder's memory, so that every replica's ingest publishes a group's results."""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import globus_compute_task_groups

__all__ = ["ComputeGroupTable"]

_groups = globus_compute_task_groups


class ComputeGroupTable:
    """Rows of `globus_compute_task_groups`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, task_group_id: uuid.UUID, *, owner_id: uuid.UUID, queue: str, now: float) -> uuid.UUID:
        """Record the group (nothing if it is recorded already); returns its owner, which may be
        another user's if they created it first (the caller then refuses)."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_groups).on_conflict_do_nothing(index_elements=[_groups.c.task_group_id])
        with translate_errors("recording a Globus Compute task group"), self._engine.begin() as connection:
            connection.execute(
                insert, {"task_group_id": task_group_id, "owner_id": owner_id, "queue": queue, "created_at": now}
            )
            owner = connection.execute(
                select(_groups.c.owner_id).where(_groups.c.task_group_id == task_group_id)
            ).scalar_one()
        return uuid.UUID(str(owner))

    def owner(self, task_group_id: uuid.UUID) -> uuid.UUID | None:
        query = select(_groups.c.owner_id).where(_groups.c.task_group_id == task_group_id)
        with translate_errors("reading a Globus Compute task group"), self._engine.connect() as connection:
            found = connection.execute(query).scalar()
        return None if found is None else uuid.UUID(str(found))

    def queues(self, task_group_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
        """(owner, queue) of each of these groups that has a result queue."""
        if not task_group_ids:
            return {}
        query = select(_groups.c.task_group_id, _groups.c.owner_id, _groups.c.queue).where(
            _groups.c.task_group_id.in_(list(task_group_ids))
        )
        with translate_errors("reading Globus Compute task groups"), self._engine.connect() as connection:
            rows = connection.execute(query).all()
        return {uuid.UUID(str(row[0])): (uuid.UUID(str(row[1])), row[2]) for row in rows}

    def delete_older_than(self, cutoff: float) -> int:
        """Forget groups created before `cutoff` (their tasks have expired too)."""
        statement = _groups.delete().where(_groups.c.created_at < cutoff)
        with translate_errors("expiring Globus Compute task groups"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount or 0)
