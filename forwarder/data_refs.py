"""Signed, expiring read references for arguments uploaded by reference (issue 15, item 2).

A client uploads a large argument to `PUT /v1/data/{sha256}`; the forwarder keeps it in the blob
store as `data_blob_name(user, sha256)` (content-addressed per user: the same object sent in many
tasks is one blob, and one user's upload never stands in for another's) and answers a token:

    token  = base64url(claims) "." base64url(HMAC-SHA256(key, base64url(claims)))
    claims = JSON {"u": user id (hex), "s": sha256 (hex), "n": size, "e": expires_at (epoch s)}

A worker presents the token to `GET /v1/data/{sha256}` (no user token reaches the endpoint). The
forwarder accepts it only if the signature is its own, the digest in the path is the signed one and
it has not expired; it then reads the signer's own blob, so the token is bound to the task's user.
The worker checks the size and sha256 again after the download (the blob store is not trusted).

The key is 32 random bytes in a 0600 file in the forwarder's data folder (`data_ref_key_file`),
created on first start; replicas share it by pointing at the same file. Pure code: no HTTP here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import uuid
from pathlib import Path

from taskfabric.errors import ConfigError, PermissionDenied
from taskfabric.forwarder import b64url

__all__ = [
    "DataClaims",
    "DataRefSigner",
    "check_sha256",
    "data_blob_name",
    "load_or_create_key",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_BYTES = 32


@dataclasses.dataclass(frozen=True, slots=True)
class DataClaims:
    """What a valid token says: `user_id` may read blob `sha256` of `size` bytes until `expires_at`."""

    user_id: uuid.UUID
    sha256: str
    size: int
    expires_at: float


def check_sha256(value: str) -> bool:
    """Whether `value` is a sha256 digest in lower-case hex."""
    return bool(_SHA256.fullmatch(value))  # (`$` would let a trailing newline through)


def data_blob_name(user_id: uuid.UUID, sha256: str) -> str:
    """The blob name of `user_id`'s upload with this digest."""
    return f"{sha256[:2]}/{user_id.hex}-{sha256}"


class DataRefSigner:
    """Signs and checks data reference tokens with one secret key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a data reference key needs at least 16 bytes")
        self._key = key

    def sign(self, claims: DataClaims) -> str:
        body = json.dumps(
            {"u": claims.user_id.hex, "s": claims.sha256, "n": claims.size, "e": claims.expires_at},
            separators=(",", ":"),
        ).encode()
        encoded = b64url.encode(body)
        return f"{encoded}.{b64url.encode(self._mac(encoded))}"

    def verify(self, token: str, *, sha256: str, now: float) -> DataClaims:
        """The token's claims; raises `PermissionDenied` (code `DATA_REF_INVALID` or
        `DATA_REF_EXPIRED`) when it is malformed, not signed by this key, names another digest,
        or has expired."""
        encoded, _, mac = token.partition(".")
        if not encoded or not mac or len(token) > 1024:
            raise _invalid("the data reference is malformed")
        try:
            given = b64url.decode(mac)
        except ValueError:
            raise _invalid("the data reference is malformed") from None
        if not hmac.compare_digest(given, self._mac(encoded)):
            raise _invalid("the data reference's signature does not match (altered, or from another forwarder)")
        claims = _claims(encoded)
        if claims.sha256 != sha256:
            raise _invalid("the data reference was issued for another digest")
        if claims.expires_at <= now:
            raise PermissionDenied("the data reference has expired", code="DATA_REF_EXPIRED")
        return claims

    def _mac(self, encoded: str) -> bytes:
        return hmac.new(self._key, encoded.encode(), hashlib.sha256).digest()


def _claims(encoded: str) -> DataClaims:
    try:
        raw = json.loads(b64url.decode(encoded))
        return DataClaims(
            user_id=uuid.UUID(hex=str(raw["u"])),
            sha256=str(raw["s"]),
            size=int(raw["n"]),
            expires_at=float(raw["e"]),
        )
    except (ValueError, KeyError, TypeError):
        raise _invalid("the data reference's claims are malformed") from None


def _invalid(message: str) -> PermissionDenied:
    return PermissionDenied(message, code="DATA_REF_INVALID")


def load_or_create_key(path: Path) -> bytes:
    """The signing key in `path`, created (0600, 32 random bytes) when missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the data reference key {path}: {exc}", key="data_ref_key_file") from None
    else:
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_bytes(_KEY_BYTES))
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the data reference key {path}: {exc}", key="data_ref_key_file") from None
    if len(key) < 16:
        raise ConfigError(f"the data reference key {path} is shorter than 16 bytes", key="data_ref_key_file")
    return key
