"""Endpoint sharing: who besides its owner may use an endpoint, their per-grant limits, and the
record of cross-user submissions.

The rules are `forwarder/access.py`'s; this module reads what they need (through a short cache),
changes an endpoint's access document, checks per-grant limits at submit and records accepted
cross-user batches (their daily count and one `endpoint.submit` audit event per batch).

Caching (DESIGN). The owner's submit reads nothing here (the endpoint record says who owns it).
For anyone else, an endpoint's access document is cached for `ACCESS_CACHE_S`; a change made
through this replica drops its entry at once, so revoking refuses this replica's next submit at
once; other replicas notice within `ACCESS_CACHE_S`. A user's groups are read on every
cross-user submit (never cached), so a membership change takes effect at once everywhere.
Tasks accepted before a revocation still run: they are in the endpoint's queue already.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from taskfabric.errors import InvalidRequest, NotFoundError, PermissionDenied, QuotaExceeded
from taskfabric.forwarder.access import (
    NO_LIMITS,
    EndpointAccess,
    EndpointGrant,
    EndpointPermission,
    EndpointRole,
    GrantLimits,
    Principal,
    PrincipalKind,
    endpoint_role,
)
from taskfabric.forwarder.principals import resolve_user
from taskfabric.forwarder.quotas import SECONDS_PER_DAY, utc_day
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.requests import invalid
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.store.access import AuditEvent
from taskfabric.forwarder.ttl_cache import TTLCache

__all__ = [
    "ACCESS_CACHE_S",
    "GRANT_LIMIT",
    "MAX_AUDIT_EVENTS",
    "MAX_GRANTS",
    "EndpointSharing",
    "GrantRequest",
    "audit_event_body",
    "parse_limit",
    "parse_since",
]

log = logging.getLogger(__name__)

#: how long a replica reuses an endpoint's access document (changes through it: at once)
ACCESS_CACHE_S = 2.0
#: grants per endpoint
MAX_GRANTS = 1000
GRANT_LIMIT = "GRANT_LIMIT"
FORBIDDEN = "FORBIDDEN"
#: a refusal for too many waiting tasks: try again after this long
_WAITING_RETRY_AFTER_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrantRequest:
    """One grant of a `PUT /v1/endpoints/{id}/access` body, as the client named it."""

    user: str | None = None
    group: str | None = None
    role: EndpointRole = EndpointRole.SUBMIT
    limits: GrantLimits = NO_LIMITS


class EndpointSharing:
    """Access documents (read, cached, replaced), permissions, per-grant limits, submit records."""

    def __init__(self, store: Store, runner: StoreRunner, *, cache_s: float = ACCESS_CACHE_S) -> None:
        self._store = store
        self._runner = runner
        self._access: TTLCache[uuid.UUID, EndpointAccess] = TTLCache(cache_s)

    # --- decisions ----------------------------------------------------------------------

    async def access_of(self, endpoint_id: uuid.UUID) -> EndpointAccess | None:
        """The endpoint's access document (None: no such endpoint), cached briefly."""
        access = self._access.get(endpoint_id)
        if access is None:
            access = await self._runner.read(self._store.access.endpoint_access, endpoint_id)
            if access is not None:
                self._access.put(endpoint_id, access)
        return access

    def forget(self, endpoint_id: uuid.UUID) -> None:
        """The endpoint's sharing changed (or it was deleted): decide from the store next time."""
        self._access.discard(endpoint_id)

    async def permission(self, identity: Identity, endpoint_id: uuid.UUID) -> EndpointPermission | None:
        """What the caller may do with the endpoint (None: nothing, or no such endpoint)."""
        access = await self.access_of(endpoint_id)
        if access is None:
            return None
        if access.owner_id == identity.user_id:
            return EndpointPermission(role=EndpointRole.OWNER)
        group_ids = await self._runner.read(self._store.access.group_ids_of, identity.user_id)
        return endpoint_role(access, identity.user_id, group_ids)

    async def require_manager(self, identity: Identity, endpoint_id: uuid.UUID) -> EndpointPermission:
        """The caller's permission if they own or manage the endpoint; 404 for an unknown
        endpoint, 403 otherwise (as every other route on another user's endpoint)."""
        permission = await self.permission(identity, endpoint_id)
        if permission is None:
            if await self.access_of(endpoint_id) is None:
                raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")
            raise PermissionDenied(f"endpoint {endpoint_id} belongs to another user", code=FORBIDDEN)
        if not permission.role.may_manage:
            raise PermissionDenied(
                f"managing endpoint {endpoint_id} needs the manage role (you may submit to it)", code=FORBIDDEN
            )
        return permission

    async def shared_with(self, identity: Identity) -> list[tuple[uuid.UUID, EndpointPermission]]:
        """Other users' endpoints the caller has a role on, with that role."""
        group_ids = await self._runner.read(self._store.access.group_ids_of, identity.user_id)
        ids = await self._runner.read(self._store.access.shared_endpoint_ids, identity.user_id, sorted(group_ids))
        shared = []
        for endpoint_id in ids:
            access = await self.access_of(endpoint_id)
            permission = endpoint_role(access, identity.user_id, group_ids) if access is not None else None
            if permission is not None:
                shared.append((endpoint_id, permission))
        return shared

    async def usernames(self, user_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
        names: dict[uuid.UUID, str] = await self._runner.read(self._store.grants.usernames, user_ids)
        return names

    # --- per-grant limits and submission records ---------------------------------------

    async def check_limits(
        self, identity: Identity, endpoint_id: uuid.UUID, limits: GrantLimits, adding: int, *, now: float
    ) -> None:
        """429 `GRANT_LIMIT` when the batch would take the caller past a limit of their grant."""
        if limits.max_waiting_tasks is not None:
            waiting = await self._runner.read(self._store.access.waiting_tasks, identity.user_id, endpoint_id)
            if waiting + adding > limits.max_waiting_tasks:
                raise QuotaExceeded(
                    f"your grant on endpoint {endpoint_id} allows {limits.max_waiting_tasks} unfinished tasks "
                    f"(max_waiting_tasks): you have {waiting} and this batch adds {adding}; retry when some finish",
                    quota="max_waiting_tasks",
                    limit=limits.max_waiting_tasks,
                    retry_after_s=_WAITING_RETRY_AFTER_S,
                    code=GRANT_LIMIT,
                )
        if limits.max_tasks_per_day is not None:
            day = utc_day(now)
            used = await self._runner.read(self._store.access.submitted_on, identity.user_id, endpoint_id, day)
            if used + adding > limits.max_tasks_per_day:
                raise QuotaExceeded(
                    f"your grant on endpoint {endpoint_id} allows {limits.max_tasks_per_day} tasks per UTC day "
                    f"(max_tasks_per_day): you submitted {used} today and this batch adds {adding}",
                    quota="max_tasks_per_day",
                    limit=limits.max_tasks_per_day,
                    retry_after_s=(day + 1) * SECONDS_PER_DAY - now,
                    code=GRANT_LIMIT,
                )

    async def submitted(
        self, identity: Identity, endpoint_id: uuid.UUID, task_ids: Sequence[uuid.UUID], *, now: float
    ) -> None:
        """A cross-user batch was accepted: count it for the day, record one audit event. A
        failure here is logged, not raised: the tasks are accepted and will run."""
        try:
            await self._runner.write(
                self._store.access.count_submitted, identity.user_id, endpoint_id, utc_day(now), len(task_ids)
            )
            event = AuditEvent(
                action="endpoint.submit",
                actor_id=identity.user_id,
                at=now,
                endpoint_id=endpoint_id,
                detail={"tasks": len(task_ids), "first_task_id": str(task_ids[0])},
            )
            await self._runner.write(self._store.access.record, [event])
        except Exception:
            log.exception(
                "could not record %d tasks of %s on endpoint %s", len(task_ids), identity.username, endpoint_id
            )

    # --- the access document ------------------------------------------------------------

    async def document(self, endpoint_id: uuid.UUID) -> dict[str, Any]:
        """The body of `GET /v1/endpoints/{id}/access` (read from the store, not the cache)."""
        access = await self._runner.read(self._store.access.endpoint_access, endpoint_id)
        if access is None:
            raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")
        return await self._render(access)

    async def replace(
        self, identity: Identity, endpoint_id: uuid.UUID, *, public: bool, grants: Sequence[GrantRequest]
    ) -> dict[str, Any]:
        """Make the endpoint's sharing `public` + `grants` (the caller owns or manages it: checked
        by the route); returns the new document."""
        before = await self._runner.read(self._store.access.endpoint_access, endpoint_id)
        if before is None:
            raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")
        resolved = await self._resolve(before, grants)
        now = time.time()
        kept = {grant.principal: grant for grant in before.grants}
        new_grants = [_granted(kept.get(grant.principal), grant, identity, now) for grant in resolved]
        event = AuditEvent(
            action="endpoint.access",
            actor_id=identity.user_id,
            at=now,
            endpoint_id=endpoint_id,
            detail={"before": _summary(before.public, before.grants), "after": _summary(public, new_grants)},
        )
        written = await self._runner.write(
            self._store.grants.replace_endpoint_access, endpoint_id, public=public, grants=new_grants, event=event
        )
        self.forget(endpoint_id)
        if not written:
            raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")
        log.info("%s changed the sharing of endpoint %s", identity.username, endpoint_id)
        return await self.document(endpoint_id)

    async def _resolve(self, access: EndpointAccess, grants: Sequence[GrantRequest]) -> list[EndpointGrant]:
        if len(grants) > MAX_GRANTS:
            raise InvalidRequest(f"grants: {len(grants)} grants, above the limit of {MAX_GRANTS}", code="INVALID_GRANT")
        resolved: list[EndpointGrant] = []
        seen: set[Principal] = set()
        for index, grant in enumerate(grants):
            principal = await self._principal(grant, f"grants[{index}]")
            if principal.kind is PrincipalKind.USER and principal.principal_id == access.owner_id:
                raise InvalidRequest(f"grants[{index}]: the owner needs no grant", code="INVALID_GRANT")
            if principal in seen:
                raise InvalidRequest(f"grants[{index}]: names a user or group twice", code="INVALID_GRANT")
            seen.add(principal)
            resolved.append(EndpointGrant(principal=principal, role=grant.role, limits=grant.limits))
        return resolved

    async def _principal(self, grant: GrantRequest, where: str) -> Principal:
        if (grant.user is None) == (grant.group is None):
            raise InvalidRequest(f"{where}: name exactly one of user or group", code="INVALID_GRANT")
        if grant.user is not None:
            record = await resolve_user(self._runner, self._store, grant.user)
            return Principal(PrincipalKind.USER, record.user_id)
        assert grant.group is not None
        try:
            group_id = uuid.UUID(grant.group)
        except ValueError:
            raise InvalidRequest(
                f"{where}.group: {grant.group[:64]!r} is not a group id", code="INVALID_GRANT"
            ) from None
        if not await self._runner.read(self._store.grants.group_names, {group_id}):
            raise NotFoundError(f"{where}.group: no group {group_id}", code="GROUP_NOT_FOUND")
        return Principal(PrincipalKind.GROUP, group_id)

    async def _render(self, access: EndpointAccess) -> dict[str, Any]:
        user_ids = {access.owner_id}
        user_ids.update(
            grant.principal.principal_id for grant in access.grants if grant.principal.kind is PrincipalKind.USER
        )
        user_ids.update(grant.granted_by for grant in access.grants if grant.granted_by is not None)
        group_ids = {
            grant.principal.principal_id for grant in access.grants if grant.principal.kind is PrincipalKind.GROUP
        }
        users = await self.usernames(user_ids)
        groups = await self._runner.read(self._store.grants.group_names, group_ids)
        ordered = sorted(access.grants, key=lambda grant: (grant.granted_at, str(grant.principal.principal_id)))
        return {
            "endpoint_id": str(access.endpoint_id),
            "owner": users.get(access.owner_id, str(access.owner_id)),
            "public": access.public,
            "grants": [_grant_body(grant, users, groups) for grant in ordered],
        }


def _granted(previous: EndpointGrant | None, grant: EndpointGrant, identity: Identity, now: float) -> EndpointGrant:
    """`grant` with its grant time and granter: kept from an identical grant, else now and the caller."""
    if previous is not None and previous.role is grant.role and previous.limits == grant.limits:
        return dataclasses.replace(grant, granted_at=previous.granted_at, granted_by=previous.granted_by)
    return dataclasses.replace(grant, granted_at=now, granted_by=identity.user_id)


def _summary(public: bool, grants: Sequence[EndpointGrant]) -> dict[str, Any]:
    return {
        "public": public,
        "grants": [
            {
                grant.principal.kind.value: str(grant.principal.principal_id),
                "role": grant.role.value,
                "max_waiting_tasks": grant.limits.max_waiting_tasks,
                "max_tasks_per_day": grant.limits.max_tasks_per_day,
            }
            for grant in grants
        ],
    }


def _grant_body(grant: EndpointGrant, users: dict[uuid.UUID, str], groups: dict[uuid.UUID, str]) -> dict[str, Any]:
    principal_id = grant.principal.principal_id
    if grant.principal.kind is PrincipalKind.USER:
        named: dict[str, Any] = {"user": users.get(principal_id, str(principal_id)), "user_id": str(principal_id)}
    else:
        named = {"group": str(principal_id), "group_name": groups.get(principal_id)}
    return {
        **named,
        "role": grant.role.value,
        "max_waiting_tasks": grant.limits.max_waiting_tasks,
        "max_tasks_per_day": grant.limits.max_tasks_per_day,
        "granted_at": grant.granted_at,
        "granted_by": users.get(grant.granted_by) if grant.granted_by is not None else None,
    }


# --- the audit listing --------------------------------------------------------------------

#: audit events per page
MAX_AUDIT_EVENTS = 1000
_DEFAULT_AUDIT_EVENTS = 100


def parse_limit(value: str | None) -> int:
    """`limit` of an audit page: 1 to `MAX_AUDIT_EVENTS` (400 naming it otherwise)."""
    if value is None or value == "":
        return _DEFAULT_AUDIT_EVENTS
    if not (value.isascii() and value.isdecimal()) or len(value) > 6 or not 1 <= int(value) <= MAX_AUDIT_EVENTS:
        raise invalid(f"limit: {value[:32]!r} is not a whole number from 1 to {MAX_AUDIT_EVENTS}")
    return int(value)


def parse_since(value: str | None, field: str) -> float | None:
    """A time in seconds since the epoch (400 naming `field` otherwise)."""
    if value is None or value == "":
        return None
    try:
        at = float(value)
    except ValueError:
        at = math.nan
    if not math.isfinite(at) or at < 0:
        raise invalid(f"{field}: {value[:32]!r} is not a time (seconds since the epoch)")
    return at


def audit_event_body(event: AuditEvent, usernames: dict[uuid.UUID, str]) -> dict[str, Any]:
    """One event of `GET /v1/endpoints/{id}/audit`."""
    return {
        "event_id": str(event.event_id),
        "at": event.at,
        "actor": usernames.get(event.actor_id, str(event.actor_id)),
        "actor_id": str(event.actor_id),
        "action": event.action,
        "endpoint_id": str(event.endpoint_id) if event.endpoint_id else None,
        "detail": dict(event.detail),
    }
