"""Authentication providers behind one interface: `authenticate(token) -> Identity`.

- `local`: tokens created by `taskfabric admin create-token NAME`, stored as SHA-256 hashes.
- `globus`: Globus Auth token introspection (globus-sdk), cached until the token expires; refusals
  are remembered briefly; `AllowList` says which identities may use the service at all.

`make_provider(settings, users)` builds the configured one.
"""

from __future__ import annotations

from taskfabric.forwarder.auth.allow import AllowList
from taskfabric.forwarder.auth.base import (
    AUTHENTICATION_REQUIRED,
    INVALID_TOKEN,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    USER_DISABLED,
    AuthProvider,
    invalid_token,
)
from taskfabric.forwarder.auth.cache import TokenCache
from taskfabric.forwarder.auth.globus import (
    AUTH_UNAVAILABLE,
    IDENTITY_CONFLICT,
    IDENTITY_NOT_ALLOWED,
    GlobusTokenProvider,
    globus_introspection,
)
from taskfabric.forwarder.auth.local import LocalTokenProvider
from taskfabric.forwarder.auth.tokens import TOKEN_PREFIX, hash_token, new_token
from taskfabric.forwarder.settings import AuthSettings
from taskfabric.forwarder.store.users import UserTable

__all__ = [
    "AUTHENTICATION_REQUIRED",
    "AUTH_UNAVAILABLE",
    "IDENTITY_CONFLICT",
    "IDENTITY_NOT_ALLOWED",
    "INVALID_TOKEN",
    "TOKEN_EXPIRED",
    "TOKEN_PREFIX",
    "TOKEN_REVOKED",
    "USER_DISABLED",
    "AllowList",
    "AuthProvider",
    "GlobusTokenProvider",
    "LocalTokenProvider",
    "TokenCache",
    "hash_token",
    "invalid_token",
    "make_provider",
    "new_token",
]


def make_provider(settings: AuthSettings, users: UserTable) -> AuthProvider:
    """The provider `settings` name."""
    if settings.provider == "globus":
        assert settings.globus_client_id and settings.globus_client_secret  # checked by AuthSettings
        introspect, close = globus_introspection(settings.globus_client_id, settings.globus_client_secret)
        return GlobusTokenProvider(
            introspect,
            users,
            required_scope=settings.globus_required_scope,
            audience=settings.globus_audience or settings.globus_client_id,
            allow=AllowList.of(settings.allowed_domains, settings.allowed_identities),
            cache=TokenCache(settings.cache_max_entries),
            cache_max_age_s=settings.cache_max_age_s,
            negative_cache_s=settings.negative_cache_s,
            negative_cache_max_entries=settings.cache_max_entries,
            close=close,
        )
    return LocalTokenProvider(
        users, cache_s=min(60.0, settings.cache_max_age_s), cache_max_entries=settings.cache_max_entries
    )
