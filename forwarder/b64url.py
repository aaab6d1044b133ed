"""Unpadded base64url, the encoding of the forwarder's signed tokens (data references,
result-upload grants)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode(text: str) -> bytes:
    """Raises `ValueError` when `text` is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
