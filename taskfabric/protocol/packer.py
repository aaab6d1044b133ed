"""The one packer: message objects to bytes and back.

`unpack` is the trust boundary: whatever bytes it is given, it returns a valid message or raises
`ProtocolError`. It never unpickles anything; user payloads stay opaque bytes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack

from taskfabric.errors import ProtocolError
from taskfabric.protocol.messages import MESSAGE_TYPES, TAG_OF, Message
from taskfabric.protocol.schema import FieldError, record_codec

__all__ = ["PROTOCOL_VERSION", "pack", "unpack", "unpack_as"]

PROTOCOL_VERSION = 1
_VERSION_BYTE = bytes([PROTOCOL_VERSION])

_M = TypeVar("_M")


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not part of the protocol")


def pack(message: Message) -> bytes:
    """Encode a top-level message as version byte + msgpack envelope."""
    cls = type(message)
    tag = TAG_OF.get(cls)
    if tag is None:
        raise TypeError(f"{cls.__name__} is not a top-level protocol message")
    body = record_codec(cls).encode(message)
    return _VERSION_BYTE + msgpack.packb({"type": tag, "data": body}, use_bin_type=True)


def unpack(data: bytes) -> Message:
    """Decode bytes into a message, or raise `ProtocolError` naming what is wrong."""
    envelope = _unpack_envelope(data)
    tag = envelope.get("type")
    cls = MESSAGE_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None or not isinstance(tag, str):
        raise ProtocolError(f"unknown message type {tag!r}")
    try:
        decoded: Message = record_codec(cls).decode(envelope.get("data"))
    except FieldError as exc:
        raise exc.to_protocol_error(tag) from None
    return decoded


def unpack_as(data: bytes, kind: type[_M]) -> _M:
    """Decode bytes that must hold a message of class `kind`."""
    decoded = unpack(data)
    if type(decoded) is not kind:
        raise ProtocolError(f"expected a {TAG_OF.get(kind, kind.__name__)} message, got {TAG_OF[type(decoded)]}")
    return decoded


def _unpack_envelope(data: bytes) -> dict[Any, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    if len(data) < 2:
        raise ProtocolError("message too short")
    version = data[0]
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {PROTOCOL_VERSION})")
    try:
        envelope = msgpack.unpackb(
            memoryview(data)[1:], raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types on garbage: all mean "not a message"
        raise ProtocolError(f"not a valid msgpack envelope: {type(exc).__name__}: {exc}") from None
    if type(envelope) is not dict:
        raise ProtocolError("the envelope is not a map")
    return envelope
