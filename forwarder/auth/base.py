"""The one interface every authentication provider implements."""

from __future__ import annotations

from typing import Protocol

from taskfabric.errors import AuthenticationError
from taskfabric.forwarder.records import Identity

__all__ = [
    "AUTHENTICATION_REQUIRED",
    "INVALID_TOKEN",
    "TOKEN_EXPIRED",
    "TOKEN_REVOKED",
    "USER_DISABLED",
    "AuthProvider",
    "invalid_token",
]

AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"
INVALID_TOKEN = "INVALID_TOKEN"
#: 401: a local token past its `--expires-in`
TOKEN_EXPIRED = "TOKEN_EXPIRED"
#: the close reason of a results stream whose token stopped being accepted while it was open
TOKEN_REVOKED = "TOKEN_REVOKED"
#: 403: the token's user was disabled by an administrator
USER_DISABLED = "USER_DISABLED"


class AuthProvider(Protocol):
    """Turns a bearer token into an `Identity`.

    `authenticate` may block (database, network): callers run it off the event loop. It raises
    `AuthenticationError` for a token it does not accept, and `ServiceError` (503) when it cannot
    tell (the identity provider is unreachable)."""

    name: str
    #: how long a token refused in the store may still be accepted (its cache period): results
    #: streams re-check their token this often, so a revocation closes them as late as a request
    recheck_s: float

    def authenticate(self, token: str) -> Identity: ...

    def revalidate(self, token: str) -> Identity:
        """As `authenticate`, but never from the cache (results streams re-check their token
        with this, so a revocation reaches them within `recheck_s`)."""
        ...

    def cached(self, token: str) -> Identity | None:
        """The identity of a token accepted recently, without blocking (None: ask `authenticate`)."""
        ...

    def close(self) -> None: ...


def invalid_token(reason: str = "unknown, revoked, inactive or expired token") -> AuthenticationError:
    return AuthenticationError(reason, code=INVALID_TOKEN)
