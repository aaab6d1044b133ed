"""The `local` provider: tokens made by `taskfabric admin create-token`, looked up by hash."""

from __future__ import annotations

import logging

from taskfabric.forwarder.auth.base import invalid_token
from taskfabric.forwarder.auth.tokens import hash_token, looks_like_local_token
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.store.users import UserTable
from taskfabric.forwarder.ttl_cache import TTLCache

__all__ = ["LocalTokenProvider"]

log = logging.getLogger(__name__)


class LocalTokenProvider:
    """Accepts tokens whose hash is in the store's `tokens` table. An accepted token is remembered
    for `cache_s` seconds, so most requests are authenticated without a database read."""

    name = "local"

    def __init__(self, users: UserTable, *, cache_s: float = 60.0, cache_max_entries: int = 10_000) -> None:
        self._users = users
        self._cache: TTLCache[str, Identity] = TTLCache(cache_s, max_entries=cache_max_entries)

    def cached(self, token: str) -> Identity | None:
        return self._cache.get(hash_token(token)) if looks_like_local_token(token) else None

    def authenticate(self, token: str) -> Identity:
        if not looks_like_local_token(token):
            raise invalid_token()
        token_hash = hash_token(token)
        identity = self._users.identity_for_token(token_hash)
        if identity is None:
            log.info("rejected an unknown local token")
            raise invalid_token()
        self._cache.put(token_hash, identity)
        return identity

    def close(self) -> None:
        pass
