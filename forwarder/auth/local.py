"""The `local` provider: tokens made by `taskfabric admin create-token`, looked up by hash.

A token is refused when it is not stored (revoked, or its user deleted), when it has expired
(`TOKEN_EXPIRED`) or when its user is disabled (`USER_DISABLED`, 403). An accepted token is
remembered for `cache_s` seconds, never past its expiry; `taskfabric admin` changes the store
directly, so a running forwarder notices them within `cache_s` (results streams re-check their
token on that period too: `recheck_s`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from taskfabric.errors import AuthenticationError, PermissionDenied, StoreError
from taskfabric.forwarder.auth.base import TOKEN_EXPIRED, USER_DISABLED, invalid_token
from taskfabric.forwarder.auth.tokens import hash_token, looks_like_local_token
from taskfabric.forwarder.records import Identity, TokenOwner
from taskfabric.forwarder.store.users import UserTable
from taskfabric.forwarder.ttl_cache import TTLCache

__all__ = ["LocalTokenProvider", "check_usable"]

log = logging.getLogger(__name__)


class LocalTokenProvider:
    """Accepts tokens whose hash is in the store's `tokens` table, unexpired, of an enabled user.
    Each acceptance that reads the store also records the token's last use (so at most once per
    `cache_s` per token)."""

    name = "local"

    def __init__(
        self,
        users: UserTable,
        *,
        cache_s: float = 60.0,
        cache_max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._clock = clock
        self._cache: TTLCache[str, TokenOwner] = TTLCache(cache_s, max_entries=cache_max_entries)
        self.recheck_s = cache_s

    def cached(self, token: str) -> Identity | None:
        if not looks_like_local_token(token):
            return None
        owner = self._cache.get(hash_token(token))
        if owner is None or (owner.expires_at is not None and owner.expires_at <= self._clock()):
            return None  # an expired token goes to `authenticate`, which names the reason
        return owner.identity

    def revalidate(self, token: str) -> Identity:
        return self.authenticate(token)  # `authenticate` always reads the store

    def authenticate(self, token: str) -> Identity:
        if not looks_like_local_token(token):
            raise invalid_token()
        token_hash = hash_token(token)
        owner = self._users.token_owner(token_hash)
        if owner is None:
            log.info("rejected an unknown local token")
            raise invalid_token()
        now = self._clock()
        check_usable(owner, now)
        try:
            self._users.touch_token(token_hash, now=now)
        except StoreError as exc:  # the last use is for operators' eyes: not worth refusing the token
            log.warning("could not record the use of token %s: %s", owner.token_id, exc)
        self._cache.put(token_hash, owner)
        return owner.identity

    def close(self) -> None:
        pass


def check_usable(owner: TokenOwner, now: float) -> None:
    """Refuse an expired token (401 `TOKEN_EXPIRED`) or a disabled user's (403 `USER_DISABLED`)."""
    if owner.expires_at is not None and owner.expires_at <= now:
        log.info("rejected expired token %s of %s", owner.token_id, owner.identity.username)
        raise AuthenticationError("the token has expired: ask for a new one", code=TOKEN_EXPIRED)
    if owner.disabled_at is not None:
        log.info("rejected token %s of disabled user %s", owner.token_id, owner.identity.username)
        raise PermissionDenied(f"user {owner.identity.username!r} is disabled", code=USER_DISABLED)
