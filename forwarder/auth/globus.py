"""The `globus` provider: Globus Auth token introspection with the forwarder's confidential client.

`ConfidentialAppAuthClient(client_id, secret).oauth2_token_introspect(token, include="identity_set")`
(POST /v2/oauth2/token/introspect, form-encoded, HTTP Basic client auth). Active tokens issued for
this service (its resource server in `aud`, its scope in `scope`) are accepted and cached until their
`exp` (bounded by `cache_max_age_s`); others are rejected, and the rejection is remembered for
`negative_cache_s` so a client retrying a bad token does not cost one introspection per request.
Identities outside `auth.allowed_domains` / `auth.allowed_identities` get 403. Users are created on
first sight, keyed by the Globus identity `sub` (a UUID); a username another identity already holds
in the store is a 409 (`IDENTITY_CONFLICT`), not a store outage. The base
URL follows globus-sdk's rules (`GLOBUS_SDK_SERVICE_URL_AUTH` overrides it: tests point it at a
loopback stand-in, the code path is the same). This is the only module importing globus_sdk.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from taskfabric.errors import AuthenticationError, PermissionDenied, ServiceError
from taskfabric.forwarder.auth.allow import AllowList
from taskfabric.forwarder.auth.base import USER_DISABLED, invalid_token
from taskfabric.forwarder.auth.cache import TokenCache
from taskfabric.forwarder.auth.tokens import MAX_TOKEN_LENGTH, hash_token
from taskfabric.forwarder.records import Identity, UserRecord
from taskfabric.forwarder.store.engine import StoreConflict
from taskfabric.forwarder.store.users import UserTable
from taskfabric.forwarder.ttl_cache import TTLCache

__all__ = [
    "AUTH_UNAVAILABLE",
    "IDENTITY_CONFLICT",
    "IDENTITY_NOT_ALLOWED",
    "GlobusTokenProvider",
    "Introspect",
    "globus_introspection",
]

log = logging.getLogger(__name__)

AUTH_UNAVAILABLE = "AUTH_UNAVAILABLE"
IDENTITY_CONFLICT = "IDENTITY_CONFLICT"
IDENTITY_NOT_ALLOWED = "IDENTITY_NOT_ALLOWED"

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
    """Accepts tokens Globus Auth reports active, issued for `audience` (when set) and carrying
    `required_scope` (when set), of identities `allow` lets in."""

    name = "globus"

    def __init__(
        self,
        introspect: Introspect,
        users: UserTable,
        *,
        required_scope: str | None = None,
        audience: str | None = None,
        allow: AllowList | None = None,
        cache: TokenCache | None = None,
        cache_max_age_s: float = 300.0,
        negative_cache_s: float = 0.0,
        negative_cache_max_entries: int = 10000,
        clock: Callable[[], float] = time.time,
        close: Callable[[], None] | None = None,
    ) -> None:
        """`negative_cache_s`: how long a refused token is refused again without asking Globus
        Auth (0: never remembered). 503s (Globus Auth unreachable) and 409s are never remembered:
        they say nothing about the token."""
        self._introspect = introspect
        self._users = users
        self._required_scope = required_scope
        self._audience = audience
        self._allow = allow or AllowList()
        self._cache = cache if cache is not None else TokenCache(10000)
        self._cache_max_age_s = cache_max_age_s
        self._refused: TTLCache[str, _Refusal] = TTLCache(
            negative_cache_s, max_entries=negative_cache_max_entries, clock=clock
        )
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
        refused = self._refused.get(hash_token(token))
        if refused is not None:
            raise refused.error()
        return self.revalidate(token)

    def revalidate(self, token: str) -> Identity:
        """Ask Globus Auth, without the cache (results streams re-check their token this way); a
        refusal is remembered for `negative_cache_s`, a disabled user is not (enabling works at once)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise invalid_token()
        key = hash_token(token)
        now = self._clock()
        data = self._introspect(token)
        try:
            sub, username, expires_at = self._accepted_claims(data, now)
            self._check_allowed(sub, username)
        except (AuthenticationError, PermissionDenied) as exc:
            self._refused.put(key, _Refusal(type(exc), str(exc), exc.code))
            raise
        record = self._ensure_user(sub, username)
        if record.disabled_at is not None:
            raise PermissionDenied(f"user {username!r} is disabled", code=USER_DISABLED)
        identity = Identity(user_id=record.user_id, username=username, auth="globus")
        self._cache.put(key, identity, expires_at=min(expires_at, now + self._cache_max_age_s))
        return identity

    def _check_allowed(self, sub: uuid.UUID, username: str) -> None:
        reason = self._allow.refusal(sub, username)
        if reason is not None:
            log.info("refused Globus identity %s: not in the allowed domains or identities", sub)
            raise PermissionDenied(reason, code=IDENTITY_NOT_ALLOWED)

    def _ensure_user(self, sub: uuid.UUID, username: str) -> UserRecord:
        """The user of identity `sub`. The store keeps Globus usernames unique: when another
        identity holds this one (Globus reassigned it, or a stale row), the caller gets a 409 naming
        it; a 503 would read as an outage and lock the user out with no hint of the cause."""
        try:
            return self._users.ensure(sub, username, auth="globus")
        except StoreConflict:
            log.warning("Globus identity %s: its username is held by another identity in the store", sub)
            raise ServiceError(
                f"the username {username!r} of identity {sub} is held by another Globus identity in this "
                "forwarder's store; an administrator must rename or remove that user",
                status=409,
                code=IDENTITY_CONFLICT,
            ) from None

    def _accepted_claims(self, data: Mapping[str, Any], now: float) -> tuple[uuid.UUID, str, float]:
        if data.get("active") is not True:
            raise invalid_token("inactive or expired token")
        exp = data.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now:
            raise invalid_token("expired token")
        self._check_audience(data.get("aud"))
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

    def _check_audience(self, aud: object) -> None:
        """Globus Auth lists the resource servers a token was issued for in `aud` (a list of
        names / client ids); a token for another service must not work here, even if it is active."""
        if self._audience is None:
            return
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self._audience not in audiences:
            raise invalid_token(f"the token was not issued for this service (its audience lacks {self._audience})")

    def close(self) -> None:
        if self._close is not None:
            self._close()


@dataclasses.dataclass(frozen=True, slots=True)
class _Refusal:
    """A remembered refusal, raised afresh each time (an exception instance is not shared across
    threads: its traceback would grow with every raise)."""

    kind: type[ServiceError]
    message: str
    code: str

    def error(self) -> ServiceError:
        return self.kind(self.message, code=self.code)
