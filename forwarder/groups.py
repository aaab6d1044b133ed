"""Groups of users (sharing, issue 13): create, list, show, add and remove members, delete.

Roles (`access.GroupRole`): the **owner** (who created the group) does everything; a **manager**
adds and removes members, but not managers or the owner; a **member** only sees the group. Anyone
but the owner may leave a group (remove themselves); the owner cannot be removed or demoted, only
the group deleted (which deletes its grants on endpoints and functions at once). A group is
invisible to non-members: every route answers them 404 `GROUP_NOT_FOUND`, the same as for a group
that does not exist. Every change is recorded in the sharing audit (`group.*` actions).

The rules (`check_set_member`, `check_remove_member`, `check_delete`) are plain functions on
roles, unit-tested without a store; `GroupService` reads, decides, writes and audits.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from typing import Any

from taskfabric.errors import InvalidRequest, NotFoundError, PermissionDenied, ServiceError
from taskfabric.forwarder.access import GroupRole
from taskfabric.forwarder.principals import resolve_user
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.store import Store, StoreConflict, StoreRunner
from taskfabric.forwarder.store.access import AuditEvent
from taskfabric.forwarder.store.groups import GroupMemberRecord, GroupRecord

__all__ = [
    "GROUP_CHANGED",
    "GROUP_MANAGER_REQUIRED",
    "GROUP_NAME_PATTERN",
    "GROUP_NAME_TAKEN",
    "GROUP_NOT_FOUND",
    "GROUP_OWNER_FIXED",
    "GROUP_OWNER_REQUIRED",
    "INVALID_GROUP_NAME",
    "INVALID_GROUP_ROLE",
    "MAX_DESCRIPTION_CHARS",
    "MEMBER_NOT_FOUND",
    "GroupDetails",
    "GroupService",
    "check_delete",
    "check_group_name",
    "check_remove_member",
    "check_set_member",
    "parse_member_role",
]

GROUP_NOT_FOUND = "GROUP_NOT_FOUND"
MEMBER_NOT_FOUND = "MEMBER_NOT_FOUND"
GROUP_NAME_TAKEN = "GROUP_NAME_TAKEN"
GROUP_CHANGED = "GROUP_CHANGED"
GROUP_MANAGER_REQUIRED = "GROUP_MANAGER_REQUIRED"
GROUP_OWNER_REQUIRED = "GROUP_OWNER_REQUIRED"
GROUP_OWNER_FIXED = "GROUP_OWNER_FIXED"
INVALID_GROUP_NAME = "INVALID_GROUP_NAME"
INVALID_GROUP_ROLE = "INVALID_GROUP_ROLE"
INVALID_GROUP_DESCRIPTION = "INVALID_GROUP_DESCRIPTION"

#: a group name: unique among its owner's groups; not a UUID (clients take a name or an id)
GROUP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
_GROUP_NAME_RE = re.compile(GROUP_NAME_PATTERN)
MAX_DESCRIPTION_CHARS = 1000
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# --- the rules ------------------------------------------------------------------------------


def check_group_name(name: str) -> str:
    """The name, or 400 `INVALID_GROUP_NAME` saying what a name may be."""
    if not _GROUP_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"name: {name[:64]!r} is not a group name (1-128 letters, digits, '_', '.', '@', '-', "
            "starting with a letter or digit)",
            code=INVALID_GROUP_NAME,
        )
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    raise InvalidRequest(
        "name: a group name must not be a UUID (groups are named by name or id)", code=INVALID_GROUP_NAME
    )


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRequest(f"description: at most {MAX_DESCRIPTION_CHARS} characters", code=INVALID_GROUP_DESCRIPTION)
    if _CONTROL_RE.search(description):
        raise InvalidRequest("description: control characters are not allowed", code=INVALID_GROUP_DESCRIPTION)
    return description


def parse_member_role(role: str) -> GroupRole:
    """A role a member may be given: member or manager (a group has one owner, its creator)."""
    if role in (GroupRole.MEMBER.value, GroupRole.MANAGER.value):
        return GroupRole(role)
    raise InvalidRequest(f"role: {role[:32]!r} is not 'member' or 'manager'", code=INVALID_GROUP_ROLE)


def check_set_member(actor: GroupRole, current: GroupRole | None, new: GroupRole) -> None:
    """May someone with role `actor` give a user (now `current`; None: not a member) role `new`?"""
    if actor is GroupRole.MEMBER:
        raise PermissionDenied("only the group's owner and managers add members", code=GROUP_MANAGER_REQUIRED)
    if current is GroupRole.OWNER:
        raise PermissionDenied("the group's owner keeps the owner role", code=GROUP_OWNER_FIXED)
    if GroupRole.MANAGER in (current, new) and actor is not GroupRole.OWNER:
        raise PermissionDenied("only the group's owner names or changes managers", code=GROUP_OWNER_REQUIRED)


def check_remove_member(actor: GroupRole, target: GroupRole | None, *, self_removal: bool) -> None:
    """May someone with role `actor` remove a member with role `target` (None: not a member)?
    Anyone but the owner may leave (`self_removal`)."""
    if target is GroupRole.OWNER:
        raise PermissionDenied("the group's owner cannot be removed: delete the group instead", code=GROUP_OWNER_FIXED)
    if self_removal and target is not None:
        return
    if actor is GroupRole.MEMBER:
        raise PermissionDenied("only the group's owner and managers remove members", code=GROUP_MANAGER_REQUIRED)
    if target is None:
        raise NotFoundError("the user is not a member of the group", code=MEMBER_NOT_FOUND)
    if target is GroupRole.MANAGER and actor is not GroupRole.OWNER:
        raise PermissionDenied("only the group's owner removes managers", code=GROUP_OWNER_REQUIRED)


def check_delete(actor: GroupRole) -> None:
    if actor is not GroupRole.OWNER:
        raise PermissionDenied("only the group's owner deletes it", code=GROUP_OWNER_REQUIRED)


# --- the service ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupDetails:
    """A group as one of its members sees it: the group, the caller's role, its members."""

    group: GroupRecord
    role: GroupRole
    members: list[GroupMemberRecord]


class GroupService:
    """Groups for the routes: every method takes the caller and enforces the rules above."""

    def __init__(self, store: Store, runner: StoreRunner) -> None:
        self._store = store
        self._runner = runner

    async def create(self, identity: Identity, *, name: str, description: str = "") -> GroupRecord:
        """A new group owned by the caller; 409 `GROUP_NAME_TAKEN` if they have one of that name."""
        name = check_group_name(name)
        description = check_description(description)
        try:
            group_id = await self._runner.write(
                self._store.groups.create, identity.user_id, name=name, description=description, now=time.time()
            )
        except StoreConflict:
            raise ServiceError(f"you already have a group named {name!r}", status=409, code=GROUP_NAME_TAKEN) from None
        await self._audit(identity, "group.create", group_id, {"name": name})
        return await self._get(group_id)

    async def list(self, identity: Identity) -> list[GroupRecord]:
        """The groups the caller belongs to, with their role in each."""
        return await self._runner.read(self._store.groups.of_user, identity.user_id)

    async def get(self, identity: Identity, group_id: uuid.UUID) -> GroupDetails:
        role = await self._role(identity, group_id)
        group = await self._get(group_id)
        members = await self._runner.read(self._store.groups.members, group_id)
        return GroupDetails(group=group, role=role, members=members)

    async def set_member(
        self, identity: Identity, group_id: uuid.UUID, *, user: str, role: str
    ) -> tuple[GroupMemberRecord, bool]:
        """Add the user named `user` with `role`, or change their role: (their member record,
        whether they were added)."""
        new = parse_member_role(role)
        actor = await self._role(identity, group_id)
        target = await resolve_user(self._runner, self._store, user)
        current = await self._runner.read(self._store.groups.role_of, group_id, target.user_id)
        check_set_member(actor, current, new)
        now = time.time()
        try:
            before = await self._runner.write(
                self._store.groups.set_member, group_id, target.user_id, role=new, added_by=identity.user_id, now=now
            )
        except StoreConflict:  # the same user added concurrently, or the group or user deleted meanwhile
            raise ServiceError(
                "the group or its members changed while adding: look again and retry", status=409, code=GROUP_CHANGED
            ) from None
        if before is not new:
            detail = {"user_id": str(target.user_id), "username": target.username, "role": new.value}
            if before is not None:
                detail["previous_role"] = before.value
            await self._audit(identity, "group.add_member", group_id, detail)
        member = GroupMemberRecord(
            user_id=target.user_id, username=target.username, role=new, added_at=now, added_by=identity.user_id
        )
        return member, before is None

    async def remove_member(self, identity: Identity, group_id: uuid.UUID, *, user: str) -> None:
        """Remove the user named `user` (anyone but the owner may remove themselves)."""
        actor = await self._role(identity, group_id)
        target = await resolve_user(self._runner, self._store, user)
        current = await self._runner.read(self._store.groups.role_of, group_id, target.user_id)
        check_remove_member(actor, current, self_removal=target.user_id == identity.user_id)
        if not await self._runner.write(self._store.groups.remove_member, group_id, target.user_id):
            raise NotFoundError("the user is not a member of the group", code=MEMBER_NOT_FOUND)
        detail = {"user_id": str(target.user_id), "username": target.username, "role": current.value if current else ""}
        await self._audit(identity, "group.remove_member", group_id, detail)

    async def delete(self, identity: Identity, group_id: uuid.UUID) -> int:
        """Delete the group with its members and its grants; returns how many grants went."""
        check_delete(await self._role(identity, group_id))
        group = await self._get(group_id)
        grants = await self._runner.write(self._store.groups.delete, group_id)
        if grants is None:
            raise _not_found(group_id)
        await self._audit(identity, "group.delete", group_id, {"name": group.name, "grants_deleted": grants})
        return grants

    async def _role(self, identity: Identity, group_id: uuid.UUID) -> GroupRole:
        """The caller's role in the group; 404 when they are not a member (or it does not exist)."""
        role = await self._runner.read(self._store.groups.role_of, group_id, identity.user_id)
        if role is None:
            raise _not_found(group_id)
        return role

    async def _get(self, group_id: uuid.UUID) -> GroupRecord:
        group = await self._runner.read(self._store.groups.get, group_id)
        if group is None:
            raise _not_found(group_id)
        return group

    async def _audit(self, identity: Identity, action: str, group_id: uuid.UUID, detail: dict[str, Any]) -> None:
        event = AuditEvent(action=action, actor_id=identity.user_id, group_id=group_id, detail=detail)
        await self._runner.write(self._store.access.record, [event])


def _not_found(group_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"no group {group_id} among your groups", code=GROUP_NOT_FOUND)
