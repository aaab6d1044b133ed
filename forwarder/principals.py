"""Naming users and groups in sharing requests.

A user is named by username (local accounts, or the Globus username of an identity that has used
this service once) or by user id (for Globus users, their identity `sub`). A group is named by its
id; clients turn a group name into an id from the caller's own `list_groups()`.
"""

from __future__ import annotations

import uuid

from taskfabric.errors import InvalidRequest, NotFoundError
from taskfabric.forwarder.access import Principal, PrincipalKind
from taskfabric.forwarder.records import UserRecord
from taskfabric.forwarder.store import Store, StoreRunner

__all__ = ["USER_NOT_FOUND", "resolve_user", "user_principal"]

USER_NOT_FOUND = "USER_NOT_FOUND"
_AUTH_KINDS = ("local", "globus")


def _as_uuid(name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(name)
    except ValueError:
        return None


def _lookup(store: Store, name: str) -> UserRecord | None:
    user_id = _as_uuid(name)
    if user_id is not None:
        found = store.users.get(user_id)
        if found is not None:
            return found
    matches = [record for auth in _AUTH_KINDS if (record := store.users.find(name, auth=auth)) is not None]
    if len(matches) > 1:
        raise InvalidRequest(
            f"the name {name!r} is held by a local user and by a Globus identity: name the user by id",
            code="AMBIGUOUS_USER",
        )
    return matches[0] if matches else None


async def resolve_user(runner: StoreRunner, store: Store, name: str) -> UserRecord:
    """The user named `name` (username or id); 404 `USER_NOT_FOUND` naming it otherwise."""
    name = name.strip()
    if not name or len(name) > 256:
        raise InvalidRequest("a user name must be 1-256 characters", code="INVALID_USER_NAME")
    record = await runner.read(_lookup, store, name)
    if record is None:
        raise NotFoundError(
            f"no user {name!r} on this service (a Globus user must use the service once before being named)",
            code=USER_NOT_FOUND,
        )
    return record


async def user_principal(runner: StoreRunner, store: Store, name: str) -> tuple[Principal, UserRecord]:
    """The principal of the user named `name`, with their record (for display names)."""
    record = await resolve_user(runner, store, name)
    return Principal(PrincipalKind.USER, record.user_id), record
