"""Users and their (hashed) local tokens: ids, prefixes, expiry, last use; disabling and deleting users."""

from __future__ import annotations

import builtins
import time
import uuid

from sqlalchemy import Connection, Engine, Row, func, select

from taskfabric.errors import StoreError
from taskfabric.forwarder.access import PrincipalKind
from taskfabric.forwarder.records import Identity, TokenOwner, TokenRecord, UserRecord
from taskfabric.forwarder.store.engine import StoreConflict, translate_errors
from taskfabric.forwarder.store.groups import delete_group_grants
from taskfabric.forwarder.store.schema import (
    endpoint_grants,
    endpoints,
    function_grants,
    functions,
    group_members,
    groups,
    tokens,
    users,
)

__all__ = ["UserTable"]


class UserTable:
    """Reads and writes of `users` and `tokens`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, username: str, *, auth: str = "local", user_id: uuid.UUID | None = None) -> UserRecord:
        """Add a user; `StoreConflict` if the name is taken for this kind of auth."""
        record = UserRecord(user_id=user_id or uuid.uuid4(), username=username, auth=auth, created_at=time.time())
        with translate_errors(f"creating user {username!r}"), self._engine.begin() as connection:
            connection.execute(
                users.insert().values(
                    user_id=record.user_id, username=username, auth=auth, created_at=record.created_at
                )
            )
        return record

    def find(self, username: str, *, auth: str = "local") -> UserRecord | None:
        with translate_errors("looking up a user"), self._engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.username == username, users.c.auth == auth)).first()
        return _user(row) if row is not None else None

    def get(self, user_id: uuid.UUID) -> UserRecord | None:
        with translate_errors("looking up a user"), self._engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.user_id == user_id)).first()
        return _user(row) if row is not None else None

    def ensure(self, user_id: uuid.UUID, username: str, *, auth: str) -> UserRecord:
        """The user with this id (an external identity), created on first sight; its name follows
        the identity provider's."""
        existing = self.get(user_id)
        if existing is not None:
            if existing.username != username:
                with translate_errors("renaming a user"), self._engine.begin() as connection:
                    connection.execute(users.update().where(users.c.user_id == user_id).values(username=username))
            return existing
        try:
            return self.create(username, auth=auth, user_id=user_id)
        except StoreConflict:  # created concurrently (or the name is taken: then it is really a conflict)
            found = self.get(user_id)
            if found is None:
                raise
            return found

    def list(self) -> list[UserRecord]:
        """Every user with the number of its tokens, by name."""
        counts = select(tokens.c.user_id, func.count().label("tokens")).group_by(tokens.c.user_id).subquery("counts")
        query = (
            select(users, func.coalesce(counts.c.tokens, 0).label("tokens"))
            .outerjoin(counts, counts.c.user_id == users.c.user_id)
            .order_by(users.c.username)
        )
        with translate_errors("listing users"), self._engine.connect() as connection:
            return [_user(row, tokens=int(row.tokens)) for row in connection.execute(query)]

    def add_token(
        self,
        user_id: uuid.UUID,
        token_hash: str,
        *,
        description: str = "",
        prefix: str = "",
        expires_at: float | None = None,
    ) -> TokenRecord:
        """Store a new token's hash; returns its record (with a fresh public `token_id`)."""
        record = TokenRecord(
            token_id=uuid.uuid4().hex,
            user_id=user_id,
            prefix=prefix,
            label=description,
            created_at=time.time(),
            expires_at=expires_at,
        )
        with translate_errors("storing a token"), self._engine.begin() as connection:
            connection.execute(
                tokens.insert().values(
                    token_hash=token_hash,
                    user_id=user_id,
                    description=description,
                    created_at=record.created_at,
                    token_id=record.token_id,
                    prefix=prefix,
                    expires_at=expires_at,
                )
            )
        return record

    def list_tokens(self, user_id: uuid.UUID) -> builtins.list[TokenRecord]:
        """The user's tokens, oldest first (never their hashes)."""
        query = select(tokens).where(tokens.c.user_id == user_id).order_by(tokens.c.created_at)
        with translate_errors("listing tokens"), self._engine.connect() as connection:
            return [_token(row) for row in connection.execute(query)]

    def delete_tokens(self, user_id: uuid.UUID, *, token_hash: str | None = None, token_id: str | None = None) -> int:
        """Delete one token of the user (by hash or by id) or, with neither, all of them; returns
        how many were deleted."""
        statement = tokens.delete().where(tokens.c.user_id == user_id)
        if token_hash is not None:
            statement = statement.where(tokens.c.token_hash == token_hash)
        if token_id is not None:
            statement = statement.where(tokens.c.token_id == token_id)
        with translate_errors("revoking tokens"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)

    def token_owner(self, token_hash: str) -> TokenOwner | None:
        """Who a token hash belongs to, with what decides whether it may be used (expiry, the
        user being disabled); None for a token that is not stored."""
        query = (
            select(
                users.c.user_id,
                users.c.username,
                users.c.auth,
                users.c.disabled_at,
                tokens.c.token_id,
                tokens.c.expires_at,
            )
            .join(tokens, tokens.c.user_id == users.c.user_id)
            .where(tokens.c.token_hash == token_hash)
        )
        with translate_errors("checking a token"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return TokenOwner(
            identity=Identity(user_id=row.user_id, username=row.username, auth=row.auth),
            token_id=row.token_id or "",
            expires_at=row.expires_at,
            disabled_at=row.disabled_at,
        )

    def identity_for_token(self, token_hash: str) -> Identity | None:
        """The local user a token hash belongs to, if any (expiry and disabling not considered)."""
        owner = self.token_owner(token_hash)
        return owner.identity if owner is not None else None

    def touch_token(self, token_hash: str, *, now: float) -> None:
        """Record that the token was accepted now (the provider calls this once per cache period,
        not per request)."""
        statement = tokens.update().where(tokens.c.token_hash == token_hash).values(last_used_at=now)
        with translate_errors("recording a token's use"), self._engine.begin() as connection:
            connection.execute(statement)

    def set_disabled(self, user_id: uuid.UUID, *, at: float | None) -> None:
        """Disable the user from `at` (its tokens are refused), or enable it again with None."""
        statement = users.update().where(users.c.user_id == user_id).values(disabled_at=at)
        with translate_errors("disabling a user"), self._engine.begin() as connection:
            connection.execute(statement)

    def delete(self, user_id: uuid.UUID) -> None:
        """Delete the user; its tokens, functions and endpoints go with it, and (sharing) its
        group memberships, the groups it owns with their grants, and the grants naming it;
        its tasks stay until they expire (they have no foreign key: fail them first)."""
        with translate_errors("deleting a user"), self._engine.begin() as connection:
            connection.execute(tokens.delete().where(tokens.c.user_id == user_id))
            _delete_sharing_of(connection, user_id)
            connection.execute(endpoints.delete().where(endpoints.c.owner_id == user_id))
            connection.execute(functions.delete().where(functions.c.owner_id == user_id))
            connection.execute(users.delete().where(users.c.user_id == user_id))


def _delete_sharing_of(connection: Connection, user_id: uuid.UUID) -> None:
    """A deleted user's sharing (in the caller's transaction): the grants naming the user, the
    groups it owns with their grants and members, its memberships of other groups. The foreign
    keys would cascade groups and memberships; grants name their principal without one."""
    for table in (endpoint_grants, function_grants):
        connection.execute(
            table.delete().where(table.c.principal_kind == PrincipalKind.USER.value, table.c.principal_id == user_id)
        )
    owned = list(connection.execute(select(groups.c.group_id).where(groups.c.owner_id == user_id)).scalars())
    delete_group_grants(connection, owned)
    if owned:
        connection.execute(group_members.delete().where(group_members.c.group_id.in_(owned)))
        connection.execute(groups.delete().where(groups.c.group_id.in_(owned)))
    connection.execute(group_members.delete().where(group_members.c.user_id == user_id))


def _user(row: Row[tuple[object, ...]], *, tokens: int = 0) -> UserRecord:
    mapping = row._mapping
    user_id = mapping["user_id"]
    if not isinstance(user_id, uuid.UUID):
        raise StoreError(f"bad user id in the store: {user_id!r}")
    return UserRecord(
        user_id=user_id,
        username=mapping["username"],
        auth=mapping["auth"],
        created_at=mapping["created_at"],
        tokens=tokens,
        disabled_at=mapping.get("disabled_at"),
    )


def _token(row: Row[tuple[object, ...]]) -> TokenRecord:
    return TokenRecord(
        token_id=row.token_id or "",
        user_id=row.user_id,
        prefix=row.prefix or "",
        label=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
    )
