"""The `globus` provider: Globus Auth token introspection with the forwarder's confidential client.

`ConfidentialAppAuthClient(client_id, secret).oauth2_token_introspect(token, include="identity_set")`
(POST /v2/oauth2/token/introspect, form-encoded, HTTP Basic client auth). Active tokens are
accepted and cached until their `exp` (bounded by `cache_max_age_s`); inactive or expired ones are
rejected. Users are created on first sight, keyed by the Globus identity `sub` (a UUID). The base
URL follows globus-sdk's rules (`GLOBUS_SDK_SERVICE_URL_AUTH` overrides it: tests point it at a
loopback stand-in, the code path is the same). This is the only module importing globus_sdk.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from taskfabric.errors import PermissionDenied, ServiceError
from taskfabric.forwarder.auth.base import USER_DISABLED, invalid_token
from taskfabric.forwarder.auth.cache import TokenCache
from taskfabric.forwarder.auth.tokens import MAX_TOKEN_LENGTH, hash_token
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.store.users import UserTable

__all__ = ["AUTH_UNAVAILABLE", "GlobusTokenProvider", "Introspect", "globus_introspection"]

log = logging.getLogger(__name__)

AUTH_UNAVAILABLE = "AUTH_UNAVAILABLE"

#: token -> the introspection response's fields (raises ServiceError when Globus Auth cannot answer)
Introspect = Callable[[str], Mapping[str, Any]]


def globus_introspection(client_id: str, client_secret: str) -> tuple[Introspect, Callable[[], None]]:
    """An `Introspect` backed by globus-sdk, and a function closing its HTTP session."""
    import globus_sdk

    client = globus_sdk.ConfidentialAppAuthClient(client_id, client_secret)

    def introspect(token: str) -> Mapping[str, Any]:
        try:
            response = client.oauth2_token_introspect(token, include="identity_set")
        except globus_sdk.GlobusAPIError as exc:
            log.error("Globus Auth refused the introspection call: HTTP %s %s", exc.http_status, exc.code)
            raise ServiceError(
                f"the identity provider refused the forwarder's introspection call (HTTP {exc.http_status})",
                status=503,
                code=AUTH_UNAVAILABLE,
            ) from None
        except globus_sdk.GlobusError as exc:
            log.warning("Globus Auth unreachable: %s", type(exc).__name__)
            raise ServiceError(
                f"the identity provider is unreachable ({type(exc).__name__})", status=503, code=AUTH_UNAVAILABLE
            ) from None
        data = response.data
        if not isinstance(data, Mapping):
            raise ServiceError("the identity provider sent a malformed answer", status=503, code=AUTH_UNAVAILABLE)
        return data

    def close() -> None:
        transport = getattr(client, "transport", None)
        session = getattr(transport, "session", None)
        if session is not None:
            session.close()

    return introspect, close


class GlobusTokenProvider:
    """Accepts tokens Globus Auth reports active (and, if configured, carrying a required scope)."""

    name = "globus"

    def __init__(
        self,
        introspect: Introspect,
        users: UserTable,
        *,
        required_scope: str | None = None,
        cache: TokenCache | None = None,
        cache_max_age_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._introspect = introspect
        self._users = users
        self._required_scope = required_scope
        self._cache = cache if cache is not None else TokenCache(10000)
        self._cache_max_age_s = cache_max_age_s
        self.recheck_s = cache_max_age_s
        self._clock = clock
        self._close = close

    def cached(self, token: str) -> Identity | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return self._cache.get(hash_token(token), now=self._clock())

    def authenticate(self, token: str) -> Identity:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise invalid_token()
        cached = self._cache.get(hash_token(token), now=self._clock())
        if cached is not None:
            return cached
        return self.revalidate(token)

    def revalidate(self, token: str) -> Identity:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise invalid_token()
        key = hash_token(token)
        now = self._clock()
        data = self._introspect(token)
        sub, username, expires_at = self._accepted_claims(data, now)
        record = self._users.ensure(sub, username, auth="globus")
        if record.disabled_at is not None:
            raise PermissionDenied(f"user {username!r} is disabled", code=USER_DISABLED)
        identity = Identity(user_id=record.user_id, username=username, auth="globus")
        self._cache.put(key, identity, expires_at=min(expires_at, now + self._cache_max_age_s))
        return identity

    def _accepted_claims(self, data: Mapping[str, Any], now: float) -> tuple[uuid.UUID, str, float]:
        if data.get("active") is not True:
            raise invalid_token("inactive or expired token")
        exp = data.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now:
            raise invalid_token("expired token")
        if self._required_scope and self._required_scope not in str(data.get("scope") or "").split():
            raise invalid_token(f"the token lacks the required scope {self._required_scope}")
        try:
            sub = uuid.UUID(str(data.get("sub")))
        except ValueError:
            log.warning("Globus Auth answered an active token without a valid 'sub'")
            raise invalid_token("the identity provider did not name a valid identity") from None
        username = data.get("username")
        if not isinstance(username, str) or not username or len(username) > 256:
            username = str(sub)
        return sub, username, float(exp)

    def close(self) -> None:
        if self._close is not None:
            self._close()
