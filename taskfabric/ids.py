"""Fast UUIDs for the hot paths (every task id is made, packed and parsed many times).

`uuid_from_bytes(b)` is `uuid.UUID(bytes=b)` without its argument juggling (`uuid_from_int`, the
same for `uuid.UUID(int=i)`); `new_uuid4s(n)` makes
n random version-4 UUIDs from one `os.urandom` call. Both build `uuid.UUID` objects the way the
uuid module does internally, through the slots' descriptors (UUID forbids normal assignment).
"""

from __future__ import annotations

import os
import uuid

__all__ = ["new_uuid4s", "uuid_from_bytes", "uuid_from_int"]

_new = object.__new__
_set_int = uuid.UUID.__dict__["int"].__set__
_set_safe = uuid.UUID.__dict__["is_safe"].__set__
_UNKNOWN = uuid.SafeUUID.unknown
_VERSION_4_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4_BITS = (4 << 76) | (0x8000 << 48)


def uuid_from_bytes(value: bytes) -> uuid.UUID:
    """The UUID of 16 big-endian bytes (the caller checked the length)."""
    made = _new(uuid.UUID)
    _set_int(made, int.from_bytes(value, "big"))
    _set_safe(made, _UNKNOWN)
    return made


def uuid_from_int(value: int) -> uuid.UUID:
    """`uuid.UUID(int=value)` without its checks (the caller made a 128-bit value)."""
    made = _new(uuid.UUID)
    _set_int(made, value)
    _set_safe(made, _UNKNOWN)
    return made


def new_uuid4s(count: int) -> list[uuid.UUID]:
    """`count` random version-4 UUIDs (as `uuid.uuid4()` makes them, faster in bulk)."""
    raw = os.urandom(16 * count)
    made: list[uuid.UUID] = []
    for start in range(0, 16 * count, 16):
        value = (int.from_bytes(raw[start : start + 16], "big") & _VERSION_4_MASK) | _VERSION_4_BITS
        one = _new(uuid.UUID)
        _set_int(one, value)
        _set_safe(one, _UNKNOWN)
        made.append(one)
    return made
