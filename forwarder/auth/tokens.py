"""Local bearer tokens: random, recognisable by their prefix, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "looks_like_local_token", "new_token"]

TOKEN_PREFIX = "tf_"
_TOKEN_BYTES = 32
#: the longest token we bother hashing; anything longer is not one of ours
MAX_TOKEN_LENGTH = 4096


def new_token() -> str:
    """A fresh token (`tf_` + 43 URL-safe characters, 256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token: what the store keeps and looks up. A fast hash is right here:
    the tokens are 256-bit random values, so there is nothing to brute-force."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_local_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and len(token) <= MAX_TOKEN_LENGTH
