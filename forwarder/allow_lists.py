"""Endpoint allow-lists: the functions an endpoint runs (None: any), for everyone, its owner too.

Set two ways (see docs/endpoint-owner.md "Allow-lists"): the endpoint's config.yaml
`allowed_functions`, sent at each registration, and `PUT /v1/endpoints/{id}/allowed_functions`
(its owner, or a user with the manage role). A registration that carries a list replaces the
stored one (config.yaml, when it sets one, is authoritative at registration); one that carries
none leaves the stored list as the API last set it. The forwarder refuses unlisted functions at
submit (403 `FUNCTION_NOT_ALLOWED`); the agent checks again before dispatching.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Collection

from taskfabric.errors import NotFoundError, PermissionDenied
from taskfabric.forwarder.access import EndpointAccess, EndpointRole, endpoint_role
from taskfabric.forwarder.records import EndpointRecord, Identity
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.store.access import AuditEvent

__all__ = [
    "ALLOWED_FUNCTIONS_ACTION",
    "FUNCTION_NOT_ALLOWED",
    "MAX_ALLOWED_FUNCTIONS",
    "AllowLists",
    "check_allowed_functions",
    "describe_allow_list",
]

FUNCTION_NOT_ALLOWED = "FUNCTION_NOT_ALLOWED"
ALLOWED_FUNCTIONS_ACTION = "endpoint.allowed_functions"
#: ids in one allow-list
MAX_ALLOWED_FUNCTIONS = 1000
#: ids an error message quotes
_QUOTED_IDS = 20


def describe_allow_list(allowed: Collection[uuid.UUID]) -> str:
    """The list as an error message quotes it (the first few ids)."""
    ids = sorted(str(function_id) for function_id in allowed)
    if not ids:
        return "[] (no function)"
    shown = ", ".join(ids[:_QUOTED_IDS])
    more = f" and {len(ids) - _QUOTED_IDS} more" if len(ids) > _QUOTED_IDS else ""
    return f"[{shown}{more}]"


def check_allowed_functions(endpoint: EndpointRecord, function_ids: Collection[uuid.UUID]) -> None:
    """403 `FUNCTION_NOT_ALLOWED` naming the endpoint and its allow-list when it does not list
    every function (no store read: the allow-list comes with the endpoint's record)."""
    allowed = endpoint.allowed_functions
    if allowed is None:
        return
    refused = sorted(str(function_id) for function_id in function_ids if function_id not in allowed)
    if refused:
        raise PermissionDenied(
            f"endpoint {endpoint.endpoint_id} ({endpoint.name}) runs only the functions of its allow-list "
            f"{describe_allow_list(allowed)}; refused: {', '.join(refused[:_QUOTED_IDS])}",
            code=FUNCTION_NOT_ALLOWED,
        )


class AllowLists:
    """Read and change endpoints' allow-lists through the API (owner or manage role)."""

    def __init__(self, store: Store, runner: StoreRunner) -> None:
        self._store = store
        self._runner = runner

    async def get(self, identity: Identity, endpoint_id: uuid.UUID) -> frozenset[uuid.UUID] | None:
        """The allow-list (anyone with a role on the endpoint may read it: they submit under it)."""
        access = await self._access(identity, endpoint_id)
        return access.allowed_functions

    async def set(
        self, identity: Identity, endpoint_id: uuid.UUID, allowed: list[uuid.UUID] | None
    ) -> frozenset[uuid.UUID] | None:
        """Replace the allow-list (the owner or a manager); records `endpoint.allowed_functions`."""
        access = await self._access(identity, endpoint_id, manage=True)
        event = AuditEvent(
            action=ALLOWED_FUNCTIONS_ACTION,
            actor_id=identity.user_id,
            at=time.time(),
            endpoint_id=endpoint_id,
            detail={"before": _ids(access.allowed_functions), "after": _ids(allowed), "via": "api"},
        )
        await self._runner.write(self._store.function_access.set_allowed_functions, endpoint_id, allowed, event=event)
        return None if allowed is None else frozenset(allowed)

    async def registered(
        self, identity: Identity, record: EndpointRecord, allowed: list[uuid.UUID] | None
    ) -> EndpointRecord:
        """An agent registered with `allowed` from its config.yaml: store it when it is set and
        differs (None keeps what the API set); returns the record with the list in force."""
        if allowed is None:
            return record
        new = frozenset(allowed)
        if new == record.allowed_functions:
            return record
        event = AuditEvent(
            action=ALLOWED_FUNCTIONS_ACTION,
            actor_id=identity.user_id,
            at=time.time(),
            endpoint_id=record.endpoint_id,
            detail={"before": _ids(record.allowed_functions), "after": _ids(new), "via": "registration"},
        )
        await self._runner.write(
            self._store.function_access.set_allowed_functions, record.endpoint_id, allowed, event=event
        )
        return _with_allowed(record, new)

    async def _access(self, identity: Identity, endpoint_id: uuid.UUID, *, manage: bool = False) -> EndpointAccess:
        access = await self._runner.read(self._store.access.endpoint_access, endpoint_id)
        if access is None:
            raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")
        if access.owner_id == identity.user_id:
            return access
        group_ids = await self._runner.read(self._store.access.group_ids_of, identity.user_id)
        permission = endpoint_role(access, identity.user_id, group_ids)
        if permission is None:
            # as for the endpoint's other routes: another user's endpoint is 403, not 404
            raise PermissionDenied(f"endpoint {endpoint_id} belongs to another user", code="FORBIDDEN")
        if manage and not permission.role.may_manage:
            raise PermissionDenied(
                f"changing the allow-list of endpoint {endpoint_id} needs the {EndpointRole.MANAGE.value} role",
                code="FORBIDDEN",
            )
        return access


def _ids(allowed: Collection[uuid.UUID] | None) -> list[str] | None:
    return None if allowed is None else sorted(str(function_id) for function_id in allowed)


def _with_allowed(record: EndpointRecord, allowed: frozenset[uuid.UUID] | None) -> EndpointRecord:
    return dataclasses.replace(record, allowed_functions=allowed)
