"""Administration on the store directly (no server needed): local users and their tokens.

These are the plain functions behind `taskfabric admin ...`; tests call them directly.
"""

from __future__ import annotations

import re

from taskfabric.errors import TaskfabricError
from taskfabric.forwarder.auth.tokens import hash_token, new_token
from taskfabric.forwarder.records import UserRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store, StoreConflict

__all__ = ["create_token", "create_user", "list_users", "revoke_tokens"]

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def create_user(settings: ForwarderSettings, name: str) -> UserRecord:
    """Add a local user; `TaskfabricError` if the name is taken."""
    if not _USERNAME_RE.fullmatch(name):
        raise TaskfabricError(
            f"invalid user name {name[:80]!r}: use 1-64 letters, digits and . _ @ -, starting with a letter or digit"
        )
    with Store.open(settings.store_url) as store:
        try:
            return store.users.create(name, auth="local")
        except StoreConflict:
            raise TaskfabricError(f"a local user named {name!r} already exists") from None


def create_token(settings: ForwarderSettings, name: str, *, description: str = "") -> str:
    """A new token for local user `name`. The token is returned once and stored only as a hash."""
    with Store.open(settings.store_url) as store:
        user = _local_user(store, name)
        token = new_token()
        store.users.add_token(user.user_id, hash_token(token), description=description[:256])
    return token


def revoke_tokens(settings: ForwarderSettings, name: str, *, token: str | None = None) -> int:
    """Delete `token` of local user `name` or, with `token=None`, all of that user's tokens; returns
    how many were deleted. A running forwarder stops accepting a revoked token within a minute
    (it remembers accepted tokens for at most `auth.cache_max_age_s`, capped at 60 s)."""
    with Store.open(settings.store_url) as store:
        user = _local_user(store, name)
        if token is None:
            return store.users.delete_tokens(user.user_id)
        deleted = store.users.delete_tokens(user.user_id, token_hash=hash_token(token.strip()))
    if deleted == 0:
        raise TaskfabricError(f"that token is not one of {name!r}'s tokens (nothing was revoked)")
    return deleted


def list_users(settings: ForwarderSettings) -> list[UserRecord]:
    """Every user (local and Globus) with its number of local tokens."""
    with Store.open(settings.store_url) as store:
        return store.users.list()


def _local_user(store: Store, name: str) -> UserRecord:
    user = store.users.find(name, auth="local")
    if user is None:
        raise TaskfabricError(f"no local user named {name!r}; create it with: taskfabric admin create-user {name}")
    return user
