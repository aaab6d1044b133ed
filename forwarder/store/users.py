"""Users and their (hashed) local tokens."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import Engine, Row, func, select

from taskfabric.errors import StoreError
from taskfabric.forwarder.records import Identity, UserRecord
from taskfabric.forwarder.store.engine import StoreConflict, translate_errors
from taskfabric.forwarder.store.schema import tokens, users

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

    def add_token(self, user_id: uuid.UUID, token_hash: str, *, description: str = "") -> None:
        with translate_errors("storing a token"), self._engine.begin() as connection:
            connection.execute(
                tokens.insert().values(
                    token_hash=token_hash, user_id=user_id, description=description, created_at=time.time()
                )
            )

    def delete_tokens(self, user_id: uuid.UUID, *, token_hash: str | None = None) -> int:
        """Delete one token of the user (by hash) or, without `token_hash`, all of them; returns
        how many were deleted."""
        statement = tokens.delete().where(tokens.c.user_id == user_id)
        if token_hash is not None:
            statement = statement.where(tokens.c.token_hash == token_hash)
        with translate_errors("revoking tokens"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)

    def identity_for_token(self, token_hash: str) -> Identity | None:
        """The local user a token hash belongs to, if any."""
        query = (
            select(users.c.user_id, users.c.username, users.c.auth)
            .join(tokens, tokens.c.user_id == users.c.user_id)
            .where(tokens.c.token_hash == token_hash)
        )
        with translate_errors("checking a token"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return Identity(user_id=row.user_id, username=row.username, auth=row.auth)


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
    )
