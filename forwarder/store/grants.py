"""Writes of endpoint sharing: an endpoint's access document (its `public` flag and its grants)
replaced in one transaction with the audit event that records the change, and the names the
access document shows (usernames, group names). Reads behind decisions are `access.AccessTable`'s."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

from sqlalchemy import Engine, select

from taskfabric.forwarder.access import EndpointGrant
from taskfabric.forwarder.store.access import AuditEvent, record_in
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import endpoint_grants, endpoints, groups, users

__all__ = ["GrantTable"]


class GrantTable:
    """Writes of `endpoint_grants` and `endpoints.public`; names of principals."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def replace_endpoint_access(
        self, endpoint_id: uuid.UUID, *, public: bool, grants: Sequence[EndpointGrant], event: AuditEvent
    ) -> bool:
        """Make the endpoint's sharing exactly `public` and `grants`, and record `event`, in one
        transaction; False (nothing written) when the endpoint does not exist."""
        rows = [
            {
                "endpoint_id": endpoint_id,
                "principal_kind": grant.principal.kind.value,
                "principal_id": grant.principal.principal_id,
                "role": grant.role.value,
                "max_waiting_tasks": grant.limits.max_waiting_tasks,
                "max_tasks_per_day": grant.limits.max_tasks_per_day,
                "granted_at": grant.granted_at,
                "granted_by": grant.granted_by,
            }
            for grant in grants
        ]
        update = endpoints.update().where(endpoints.c.endpoint_id == endpoint_id).values(public=public)
        with translate_errors("changing an endpoint's sharing"), self._engine.begin() as connection:
            if not connection.execute(update).rowcount:
                return False
            connection.execute(endpoint_grants.delete().where(endpoint_grants.c.endpoint_id == endpoint_id))
            if rows:
                connection.execute(endpoint_grants.insert(), rows)
            record_in(connection, event)
        return True

    def usernames(self, user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        """user id -> username, for the ids that exist."""
        if not user_ids:
            return {}
        query = select(users.c.user_id, users.c.username).where(users.c.user_id.in_(list(user_ids)))
        with translate_errors("naming users"), self._engine.connect() as connection:
            return {row.user_id: row.username for row in connection.execute(query)}

    def group_names(self, group_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        """group id -> name, for the groups that exist."""
        if not group_ids:
            return {}
        query = select(groups.c.group_id, groups.c.name).where(groups.c.group_id.in_(list(group_ids)))
        with translate_errors("naming groups"), self._engine.connect() as connection:
            return {row.group_id: row.name for row in connection.execute(query)}
