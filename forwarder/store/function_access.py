"""Writes of function sharing and endpoint allow-lists: a function's public flag and grants
(`function_grants`), the functions shared with a user, and an endpoint's `allowed_functions`.
Reads behind access decisions are `AccessTable`'s (`store.access`); the audit event of each
change is written in the same transaction as the change."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence

from sqlalchemy import Engine, and_, select

from taskfabric.forwarder.access import Principal, PrincipalKind
from taskfabric.forwarder.records import FunctionRecord
from taskfabric.forwarder.store.access import AuditEvent, record_in
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.functions import FUNCTION_INFO_COLUMNS, function_record
from taskfabric.forwarder.store.schema import endpoints, function_grants, functions, groups, users

__all__ = ["FunctionAccessTable", "render_allowed_functions"]


def render_allowed_functions(allowed: Collection[uuid.UUID] | None) -> str | None:
    """The stored form of an allow-list (a sorted JSON list of ids; None: any function)."""
    if allowed is None:
        return None
    return json.dumps(sorted(str(function_id) for function_id in set(allowed)))


class FunctionAccessTable:
    """Function sharing and endpoint allow-lists (writes, and the listing of shared functions)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def set_function_access(
        self,
        function_id: uuid.UUID,
        *,
        public: bool,
        principals: Sequence[Principal],
        actor_id: uuid.UUID,
        event: AuditEvent,
    ) -> None:
        """Replace the function's public flag and grants, and record `event`, in one transaction."""
        rows = [
            {
                "function_id": function_id,
                "principal_kind": principal.kind.value,
                "principal_id": principal.principal_id,
                "granted_at": event.at,
                "granted_by": actor_id,
            }
            for principal in dict.fromkeys(principals)
        ]
        with translate_errors("changing a function's sharing"), self._engine.begin() as connection:
            connection.execute(functions.update().where(functions.c.function_id == function_id).values(public=public))
            connection.execute(function_grants.delete().where(function_grants.c.function_id == function_id))
            if rows:
                connection.execute(function_grants.insert(), rows)
            record_in(connection, event)

    def set_allowed_functions(
        self, endpoint_id: uuid.UUID, allowed: Collection[uuid.UUID] | None, *, event: AuditEvent | None = None
    ) -> None:
        """Replace the endpoint's allow-list (None: any function), recording `event` with it."""
        with translate_errors("changing an endpoint's allow-list"), self._engine.begin() as connection:
            connection.execute(
                endpoints.update()
                .where(endpoints.c.endpoint_id == endpoint_id)
                .values(allowed_functions=render_allowed_functions(allowed))
            )
            if event is not None:
                record_in(connection, event)

    def existing_groups(self, group_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """The ids among `group_ids` that name a group."""
        query = select(groups.c.group_id).where(groups.c.group_id.in_(list(group_ids)))
        with translate_errors("checking groups"), self._engine.connect() as connection:
            return set(connection.execute(query).scalars().all())

    def shared_with(self, user_id: uuid.UUID, group_ids: Collection[uuid.UUID]) -> list[tuple[FunctionRecord, str]]:
        """Other users' functions the user may run (shared with them or a group of theirs, or
        public), with their owners' usernames, oldest first."""
        principal = and_(
            function_grants.c.principal_kind == PrincipalKind.USER.value, function_grants.c.principal_id == user_id
        )
        if group_ids:
            principal = principal | and_(
                function_grants.c.principal_kind == PrincipalKind.GROUP.value,
                function_grants.c.principal_id.in_(list(group_ids)),
            )
        granted = select(function_grants.c.function_id).where(principal)
        query = (
            select(*FUNCTION_INFO_COLUMNS, users.c.username.label("owner_username"))
            .join(users, users.c.user_id == functions.c.owner_id)
            .where(functions.c.owner_id != user_id)
            .where(functions.c.function_id.in_(granted) | functions.c.public.is_(True))
            .order_by(functions.c.created_at)
        )
        with translate_errors("listing functions shared with a user"), self._engine.connect() as connection:
            return [(function_record(row), row.owner_username) for row in connection.execute(query)]
