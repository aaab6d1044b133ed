"""Read-only aggregates the web dashboard (`forwarder/ui/`) shows, each one grouped query.

Every query is bounded by an owner or an endpoint and, where it reads finished tasks, by a time
window along `ix_tasks_completed_at`, so a page costs the same with 100,000 tasks in the store as
with 100 (benchmarks/dashboard_pages.py measures it).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from sqlalchemy import Engine, func, select

from taskfabric.forwarder.records import TaskStatus
from taskfabric.forwarder.store._sql import statement_chunks
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import tasks, tokens, users

__all__ = ["DashboardQueries", "TokenInfo"]

_SUCCESS = TaskStatus.SUCCESS.value
_FAILED = TaskStatus.FAILED.value


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """A local token as operators see it: whose, what for, since when; never the token or its hash."""

    username: str
    description: str
    created_at: float


class DashboardQueries:
    """Aggregates over `tasks` for the dashboard's pages."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def completed_per_minute(self, endpoint_id: uuid.UUID, *, since: float) -> dict[int, int]:
        """minute (seconds since the epoch // 60) -> tasks of the endpoint that ended with a result
        in it, from `since` on."""
        minute = func.floor(tasks.c.completed_at / 60)
        query = (
            select(minute, func.count())
            .where(tasks.c.completed_at >= since, tasks.c.endpoint_id == endpoint_id, tasks.c.status == _SUCCESS)
            .group_by(minute)
        )
        with translate_errors("counting completed tasks"), self._engine.connect() as connection:
            return {int(row[0]): int(row[1]) for row in connection.execute(query)}

    def failures_by_code(self, endpoint_id: uuid.UUID, *, since: float) -> dict[str, int]:
        """error code -> failed tasks of the endpoint finished from `since` on."""
        query = (
            select(tasks.c.error_code, func.count())
            .where(tasks.c.completed_at >= since, tasks.c.endpoint_id == endpoint_id, tasks.c.status == _FAILED)
            .group_by(tasks.c.error_code)
        )
        with translate_errors("counting failures"), self._engine.connect() as connection:
            return {str(row[0] or "TASK_FAILED"): int(row[1]) for row in connection.execute(query)}

    def function_usage(self, function_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
        """function id -> how many stored tasks ran (or wait to run) it, for the given functions."""
        counts: dict[uuid.UUID, int] = {}
        with translate_errors("counting function usage"), self._engine.connect() as connection:
            for chunk in statement_chunks(list(function_ids)):
                query = (
                    select(tasks.c.function_id, func.count())
                    .where(tasks.c.function_id.in_(chunk))
                    .group_by(tasks.c.function_id)
                )
                counts.update({row[0]: int(row[1]) for row in connection.execute(query)})
        return counts

    def tokens(self) -> list[TokenInfo]:
        """Every local token, by user then age (operators only)."""
        query = (
            select(users.c.username, tokens.c.description, tokens.c.created_at)
            .join(users, users.c.user_id == tokens.c.user_id)
            .order_by(users.c.username, tokens.c.created_at)
        )
        with translate_errors("listing tokens"), self._engine.connect() as connection:
            return [
                TokenInfo(username=row.username, description=row.description, created_at=row.created_at)
                for row in connection.execute(query)
            ]
