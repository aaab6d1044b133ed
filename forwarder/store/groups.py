"""Writes and reads of `groups` and `group_members` (the access model reads a user's group ids
through `access.AccessTable.group_ids_of`). A group's owner is also a member row (role "owner").
Deleting a group deletes its grants on endpoints and functions in the same transaction (grants
name their principal without a foreign key)."""

from __future__ import annotations

import builtins
import dataclasses
import uuid
from typing import Any

from sqlalchemy import Connection, Engine, Row, and_, func, select

from taskfabric.forwarder.access import GroupRole, PrincipalKind
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import endpoint_grants, function_grants, group_members, groups, users

__all__ = ["GroupMemberRecord", "GroupRecord", "GroupTable", "delete_group_grants"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupRecord:
    """A group as stored, with its owner's username, its number of members and (in a user's
    listing) that user's role in it."""

    group_id: uuid.UUID
    owner_id: uuid.UUID
    owner: str
    name: str
    description: str
    created_at: float
    members: int = 0
    role: GroupRole | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GroupMemberRecord:
    user_id: uuid.UUID
    username: str
    role: GroupRole
    added_at: float
    added_by: uuid.UUID | None = None


class GroupTable:
    """Groups and their members."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, owner_id: uuid.UUID, *, name: str, description: str, now: float) -> uuid.UUID:
        """A new group with its owner as its first member; `StoreConflict` if the owner already
        has a group of this name."""
        group_id = uuid.uuid4()
        with translate_errors(f"creating group {name!r}"), self._engine.begin() as connection:
            connection.execute(
                groups.insert().values(
                    group_id=group_id, owner_id=owner_id, name=name, description=description, created_at=now
                )
            )
            connection.execute(
                group_members.insert().values(
                    group_id=group_id, user_id=owner_id, role=GroupRole.OWNER.value, added_at=now, added_by=owner_id
                )
            )
        return group_id

    def get(self, group_id: uuid.UUID) -> GroupRecord | None:
        """The group (None: no such group)."""
        query = _group_query().where(groups.c.group_id == group_id)
        with translate_errors("reading a group"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        return _group(row) if row is not None else None

    def of_user(self, user_id: uuid.UUID) -> builtins.list[GroupRecord]:
        """The groups the user belongs to (any role), with their role, by name then id."""
        mine = group_members.alias("mine")
        query = (
            _group_query()
            .add_columns(mine.c.role.label("my_role"))
            .join(mine, and_(mine.c.group_id == groups.c.group_id, mine.c.user_id == user_id))
            .order_by(groups.c.name, groups.c.group_id)
        )
        with translate_errors("listing a user's groups"), self._engine.connect() as connection:
            return [_group(row, role=GroupRole(row.my_role)) for row in connection.execute(query)]

    def role_of(self, group_id: uuid.UUID, user_id: uuid.UUID) -> GroupRole | None:
        """The user's role in the group (None: not a member, or no such group)."""
        query = select(group_members.c.role).where(
            group_members.c.group_id == group_id, group_members.c.user_id == user_id
        )
        with translate_errors("reading a group role"), self._engine.connect() as connection:
            role = connection.execute(query).scalar()
        return GroupRole(role) if role is not None else None

    def members(self, group_id: uuid.UUID) -> builtins.list[GroupMemberRecord]:
        """The group's members with their usernames: the owner first, then managers, then members,
        each by username."""
        query = (
            select(group_members, users.c.username)
            .join(users, users.c.user_id == group_members.c.user_id)
            .where(group_members.c.group_id == group_id)
        )
        with translate_errors("listing a group's members"), self._engine.connect() as connection:
            found = [_member(row) for row in connection.execute(query)]
        return sorted(found, key=lambda member: (-member.role.rank, member.username, str(member.user_id)))

    def set_member(
        self, group_id: uuid.UUID, user_id: uuid.UUID, *, role: GroupRole, added_by: uuid.UUID, now: float
    ) -> GroupRole | None:
        """Add the user with `role`, or change their role; returns their previous role (None: they
        were not a member)."""
        where = and_(group_members.c.group_id == group_id, group_members.c.user_id == user_id)
        with translate_errors("adding a group member"), self._engine.begin() as connection:
            before = connection.execute(select(group_members.c.role).where(where)).scalar()
            if before is None:
                connection.execute(
                    group_members.insert().values(
                        group_id=group_id, user_id=user_id, role=role.value, added_at=now, added_by=added_by
                    )
                )
            elif before != role.value:
                connection.execute(group_members.update().where(where).values(role=role.value))
        return GroupRole(before) if before is not None else None

    def remove_member(self, group_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        """Remove the user from the group; False if they were not a member."""
        statement = group_members.delete().where(
            group_members.c.group_id == group_id, group_members.c.user_id == user_id
        )
        with translate_errors("removing a group member"), self._engine.begin() as connection:
            return bool(connection.execute(statement).rowcount)

    def delete(self, group_id: uuid.UUID) -> int | None:
        """Delete the group, its members and its grants on endpoints and functions, in one
        transaction; returns how many grants went (None: no such group)."""
        with translate_errors("deleting a group"), self._engine.begin() as connection:
            grants = delete_group_grants(connection, [group_id])
            connection.execute(group_members.delete().where(group_members.c.group_id == group_id))
            deleted = connection.execute(groups.delete().where(groups.c.group_id == group_id)).rowcount
        return grants if deleted else None


def delete_group_grants(connection: Connection, group_ids: builtins.list[uuid.UUID]) -> int:
    """Delete the endpoint and function grants naming these groups (in the caller's transaction);
    returns how many."""
    if not group_ids:
        return 0
    total = 0
    for table in (endpoint_grants, function_grants):
        statement = table.delete().where(
            table.c.principal_kind == PrincipalKind.GROUP.value, table.c.principal_id.in_(group_ids)
        )
        total += int(connection.execute(statement).rowcount or 0)
    return total


def _group_query() -> Any:
    count = (
        select(func.count())
        .select_from(group_members)
        .where(group_members.c.group_id == groups.c.group_id)
        .scalar_subquery()
    )
    return select(groups, users.c.username.label("owner"), count.label("member_count")).join(
        users, users.c.user_id == groups.c.owner_id
    )


def _group(row: Row[Any], *, role: GroupRole | None = None) -> GroupRecord:
    return GroupRecord(
        group_id=row.group_id,
        owner_id=row.owner_id,
        owner=row.owner,
        name=row.name,
        description=row.description or "",
        created_at=row.created_at,
        members=int(row.member_count),
        role=role,
    )


def _member(row: Row[Any]) -> GroupMemberRecord:
    return GroupMemberRecord(
        user_id=row.user_id,
        username=row.username,
        role=GroupRole(row.role),
        added_at=row.added_at,
        added_by=row.added_by,
    )
