"""The one interface every authentication provider implements."""

from __future__ import annotations

from typing import Protocol

from taskfabric.errors import AuthenticationError
from taskfabric.forwarder.records import Identity

__all__ = ["AUTHENTICATION_REQUIRED", "INVALID_TOKEN", "AuthProvider", "invalid_token"]

AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"
INVALID_TOKEN = "INVALID_TOKEN"


class AuthProvider(Protocol):
    """Turns a bearer token into an `Identity`.

    `authenticate` may block (database, network): callers run it off the event loop. It raises
    `AuthenticationError` for a token it does not accept, and `ServiceError` (503) when it cannot
    tell (the identity provider is unreachable)."""

    name: str

    def authenticate(self, token: str) -> Identity: ...

    def cached(self, token: str) -> Identity | None:
        """The identity of a token accepted recently, without blocking (None: ask `authenticate`)."""
        ...

    def close(self) -> None: ...


def invalid_token(reason: str = "unknown, revoked, inactive or expired token") -> AuthenticationError:
    return AuthenticationError(reason, code=INVALID_TOKEN)
