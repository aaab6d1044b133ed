"""What the access model reads (`forwarder/access.py` decides): a user's groups, an endpoint's or
a function's sharing, and the sharing audit both sides write. Writes of groups and grants live
with their own tables' modules (`groups`, `grants`); the audit is shared, so it is here."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite

from taskfabric.forwarder.access import (
    EndpointAccess,
    EndpointGrant,
    EndpointRole,
    FunctionAccess,
    FunctionGrant,
    GrantLimits,
    Principal,
    PrincipalKind,
)
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import (
    endpoint_grants,
    endpoints,
    function_grants,
    functions,
    group_members,
    sharing_audit,
    submissions_daily,
    tasks,
)

__all__ = ["AccessTable", "AuditEvent", "audit_row", "parse_allowed_functions", "record_in"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One sharing change or cross-user submission. `detail` is small JSON-able data (ids,
    roles, counts), never a credential or a payload."""

    action: str
    actor_id: uuid.UUID
    at: float = dataclasses.field(default_factory=time.time)
    endpoint_id: uuid.UUID | None = None
    function_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    event_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)


def parse_allowed_functions(text: str | None) -> frozenset[uuid.UUID] | None:
    """The stored allow-list (a JSON list of ids; NULL: any function)."""
    if text is None:
        return None
    return frozenset(uuid.UUID(item) for item in json.loads(text))


class AccessTable:
    """Reads behind every access decision, and the audit."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- groups -------------------------------------------------------------------------

    def group_ids_of(self, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
        """The groups the user belongs to (in any role)."""
        query = select(group_members.c.group_id).where(group_members.c.user_id == user_id)
        with translate_errors("reading a user's groups"), self._engine.connect() as connection:
            return frozenset(connection.execute(query).scalars().all())

    # --- endpoints ----------------------------------------------------------------------

    def endpoint_access(self, endpoint_id: uuid.UUID) -> EndpointAccess | None:
        """The endpoint's owner, public flag, grants and allow-list (None: no such endpoint)."""
        head = select(endpoints.c.owner_id, endpoints.c.public, endpoints.c.allowed_functions).where(
            endpoints.c.endpoint_id == endpoint_id
        )
        grants = select(endpoint_grants).where(endpoint_grants.c.endpoint_id == endpoint_id)
        with translate_errors("reading an endpoint's sharing"), self._engine.connect() as connection:
            row = connection.execute(head).first()
            if row is None:
                return None
            grant_rows = connection.execute(grants).all()
        return EndpointAccess(
            endpoint_id=endpoint_id,
            owner_id=row.owner_id,
            public=bool(row.public),
            grants=tuple(_endpoint_grant(grant) for grant in grant_rows),
            allowed_functions=parse_allowed_functions(row.allowed_functions),
        )

    def shared_endpoint_ids(self, user_id: uuid.UUID, group_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Endpoints of other users that grant the user (or one of their groups) a role, or are
        public (the caller decides the role with `access.endpoint_role`)."""
        principal = _principal_clause(endpoint_grants, user_id, group_ids)
        granted = select(endpoint_grants.c.endpoint_id).where(principal)
        public = select(endpoints.c.endpoint_id).where(endpoints.c.public.is_(True))
        query = (
            select(endpoints.c.endpoint_id)
            .where(endpoints.c.owner_id != user_id)
            .where(endpoints.c.endpoint_id.in_(granted) | endpoints.c.endpoint_id.in_(public))
        )
        with translate_errors("listing endpoints shared with a user"), self._engine.connect() as connection:
            return list(connection.execute(query).scalars().all())

    # --- functions ----------------------------------------------------------------------

    def function_access(self, function_id: uuid.UUID) -> FunctionAccess | None:
        """The function's owner, public flag and grants (None: no such function)."""
        head = select(functions.c.owner_id, functions.c.public).where(functions.c.function_id == function_id)
        grants = select(function_grants).where(function_grants.c.function_id == function_id)
        with translate_errors("reading a function's sharing"), self._engine.connect() as connection:
            row = connection.execute(head).first()
            if row is None:
                return None
            grant_rows = connection.execute(grants).all()
        return FunctionAccess(
            function_id=function_id,
            owner_id=row.owner_id,
            public=bool(row.public),
            grants=tuple(
                FunctionGrant(
                    principal=Principal(PrincipalKind(grant.principal_kind), grant.principal_id),
                    granted_at=grant.granted_at,
                    granted_by=grant.granted_by,
                )
                for grant in grant_rows
            ),
        )

    # --- per-grant limits ---------------------------------------------------------------

    def waiting_tasks(self, user_id: uuid.UUID, endpoint_id: uuid.UUID) -> int:
        """The user's unfinished tasks on one endpoint (`ix_tasks_owner_endpoint_completed`)."""
        query = (
            select(func.count())
            .select_from(tasks)
            .where(tasks.c.owner_id == user_id, tasks.c.endpoint_id == endpoint_id, tasks.c.completed_at.is_(None))
        )
        with (
            translate_errors("counting a user's unfinished tasks on an endpoint"),
            self._engine.connect() as connection,
        ):
            return int(connection.execute(query).scalar_one())

    def submitted_on(self, user_id: uuid.UUID, endpoint_id: uuid.UUID, day: int) -> int:
        """Tasks the user submitted to another user's endpoint on `day` (days since the epoch, UTC)."""
        query = select(submissions_daily.c.tasks).where(
            submissions_daily.c.endpoint_id == endpoint_id,
            submissions_daily.c.user_id == user_id,
            submissions_daily.c.day == day,
        )
        with translate_errors("reading a user's submissions of the day"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar() or 0)

    def count_submitted(self, user_id: uuid.UUID, endpoint_id: uuid.UUID, day: int, count: int) -> None:
        """Add `count` to the user's tasks of `day` on the endpoint (an upsert: replicas add at once)."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(submissions_daily).values(
            endpoint_id=endpoint_id, user_id=user_id, day=day, tasks=count
        )
        statement = insert.on_conflict_do_update(
            index_elements=[submissions_daily.c.endpoint_id, submissions_daily.c.user_id, submissions_daily.c.day],
            set_={"tasks": submissions_daily.c.tasks + insert.excluded.tasks},
        )
        with translate_errors("counting a user's submissions"), self._engine.begin() as connection:
            connection.execute(statement)

    def prune_submissions(self, before_day: int) -> int:
        """Forget the daily counts of days before `before_day`."""
        with translate_errors("pruning daily submission counts"), self._engine.begin() as connection:
            deleted = connection.execute(submissions_daily.delete().where(submissions_daily.c.day < before_day))
            return int(deleted.rowcount or 0)

    # --- audit --------------------------------------------------------------------------

    def record(self, events: Sequence[AuditEvent]) -> None:
        """Append audit events."""
        if not events:
            return
        rows = [audit_row(event) for event in events]
        with translate_errors("recording sharing audit events"), self._engine.begin() as connection:
            connection.execute(sharing_audit.insert(), rows)

    def audit_of_endpoint(self, endpoint_id: uuid.UUID, *, limit: int, before: float | None = None) -> list[AuditEvent]:
        """The endpoint's audit events, newest first (`before`: older than this time)."""
        query = select(sharing_audit).where(sharing_audit.c.endpoint_id == endpoint_id)
        if before is not None:
            query = query.where(sharing_audit.c.at < before)
        query = query.order_by(sharing_audit.c.at.desc(), sharing_audit.c.event_id).limit(limit)
        with translate_errors("reading an endpoint's audit"), self._engine.connect() as connection:
            return [_audit_event(row) for row in connection.execute(query).all()]

    def audit_of_function(self, function_id: uuid.UUID, *, limit: int) -> list[AuditEvent]:
        """The function's audit events, newest first."""
        query = (
            select(sharing_audit)
            .where(sharing_audit.c.function_id == function_id)
            .order_by(sharing_audit.c.at.desc(), sharing_audit.c.event_id)
            .limit(limit)
        )
        with translate_errors("reading a function's audit"), self._engine.connect() as connection:
            return [_audit_event(row) for row in connection.execute(query).all()]


def audit_row(event: AuditEvent) -> dict[str, Any]:
    """The `sharing_audit` row of an event (for writers that record it in their own transaction)."""
    return {
        "event_id": event.event_id,
        "at": event.at,
        "actor_id": event.actor_id,
        "action": event.action,
        "endpoint_id": event.endpoint_id,
        "function_id": event.function_id,
        "group_id": event.group_id,
        "detail": json.dumps(dict(event.detail), sort_keys=True, default=str),
    }


def record_in(connection: Connection, event: AuditEvent) -> None:
    """Append one audit event inside the caller's transaction."""
    connection.execute(sharing_audit.insert().values(**audit_row(event)))


def _principal_clause(table: Any, user_id: uuid.UUID, group_ids: Sequence[uuid.UUID]) -> Any:
    user = and_(table.c.principal_kind == PrincipalKind.USER.value, table.c.principal_id == user_id)
    if not group_ids:
        return user
    group = and_(table.c.principal_kind == PrincipalKind.GROUP.value, table.c.principal_id.in_(list(group_ids)))
    return user | group


def _endpoint_grant(row: Row[Any]) -> EndpointGrant:
    return EndpointGrant(
        principal=Principal(PrincipalKind(row.principal_kind), row.principal_id),
        role=EndpointRole(row.role),
        limits=GrantLimits(max_waiting_tasks=row.max_waiting_tasks, max_tasks_per_day=row.max_tasks_per_day),
        granted_at=row.granted_at,
        granted_by=row.granted_by,
    )


def _audit_event(row: Row[Any]) -> AuditEvent:
    return AuditEvent(
        event_id=row.event_id,
        at=row.at,
        actor_id=row.actor_id,
        action=row.action,
        endpoint_id=row.endpoint_id,
        function_id=row.function_id,
        group_id=row.group_id,
        detail=json.loads(row.detail or "{}"),
    )
