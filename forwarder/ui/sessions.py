"""Dashboard sessions: an HMAC-signed cookie naming a user and the token they signed in with.

DESIGN: nothing is stored server-side. Signing in with a token (validated exactly like a bearer
token) yields a cookie `v1.<user id>.<token hash>.<expires at>.<nonce>.<signature>`, signed with
HMAC-SHA256 under a 32-byte key kept in a 0600 file (`ui.session_key_file`). Every request checks
the signature and the expiry, then asks the store whether the token hash still belongs to the user
(local tokens: one primary-key read), so revoking the token ends the session at once. The cookie
never holds the token itself. The CSRF token of a session is HMAC(key, "csrf" + cookie): per
session, never stored, checked on every POST (with SameSite=Strict as a second line).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

__all__ = ["COOKIE_NAME", "KEY_BYTES", "Session", "SessionSigner", "load_or_create_key"]

COOKIE_NAME = "taskfabric_session"
KEY_BYTES = 32
_VERSION = "v1"
_MAX_COOKIE_CHARS = 400


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A verified session cookie's content (the token behind it is not yet re-checked)."""

    user_id: uuid.UUID
    token_hash: str
    expires_at: float
    cookie: str


def load_or_create_key(path: Path) -> bytes:
    """The signing key in `path`, made (32 random bytes, mode 0600) when the file is missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: a session key must be at least {KEY_BYTES} bytes")
    return key


class SessionSigner:
    """Makes and verifies session cookies and their CSRF tokens under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, user_id: uuid.UUID, token_hash: str, *, expires_at: float) -> str:
        """A new cookie value for this user and token, valid until `expires_at`."""
        nonce = secrets.token_urlsafe(12)
        body = f"{_VERSION}.{user_id.hex}.{token_hash}.{int(expires_at)}.{nonce}"
        return f"{body}.{self._sign(body)}"

    def verify(self, cookie: str | None, *, now: float) -> Session | None:
        """The session of a genuine, unexpired cookie; None for anything else (never raises)."""
        if not cookie or len(cookie) > _MAX_COOKIE_CHARS:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        parts = body.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            return None
        try:
            user_id = uuid.UUID(hex=parts[1])
            expires_at = float(int(parts[3]))
        except ValueError:
            return None
        if expires_at <= now:
            return None
        return Session(user_id=user_id, token_hash=parts[2], expires_at=expires_at, cookie=cookie)

    def csrf_token(self, session: Session) -> str:
        """The CSRF token every form of this session carries."""
        return self.sign_text(f"csrf.{session.cookie}")

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return self.check_text(f"csrf.{session.cookie}", token)

    def sign_text(self, text: str) -> str:
        """The MAC of `text` under the key (for tokens bound to a value, like the sign-in nonce)."""
        return self._sign(text)

    def check_text(self, text: str, token: str | None) -> bool:
        """Whether `token` is the MAC of `text` (constant time)."""
        return bool(token) and hmac.compare_digest(str(token).encode(), self._sign(text).encode())

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
