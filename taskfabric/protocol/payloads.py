"""The compression frame of user payloads (task arguments and results).

A payload is either the serializer's bytes as they are (every payload before this frame existed,
and every payload that did not pay to compress), or a compressed frame::

    frame    = magic || codec || size || compressed
    magic    = 4 bytes b"\\x00tfz"   (never the start of a pickle: 0x00 is no pickle opcode)
    codec    = one byte, 0x01 = zstd
    size     = 8 bytes, big-endian: the length of the payload once decompressed
    compressed = one zstd frame

`decode_payload` passes unframed bytes through unchanged, so old payloads still decode. It never
decompresses more than the declared size, nor a declared size above `max_bytes` (a decompression
bomb fails with `ProtocolError`, as does a malformed frame).

Whether to compress is decided per payload by `encode_payload`: nothing under `min_bytes`; above
it, a sample of the payload is compressed first and the whole payload only if the sample shrank to
at most `max_sample_ratio` of its size (random or already-compressed data is sent as it is, at the
cost of the sample alone); and the frame is kept only if it is smaller than the payload.
"""

from __future__ import annotations

import dataclasses
import struct

import zstandard

from taskfabric.errors import ProtocolError

__all__ = [
    "COMPRESSION_MAGIC",
    "DEFAULT_COMPRESSION",
    "Compression",
    "decode_payload",
    "encode_payload",
    "is_compressed",
]

COMPRESSION_MAGIC = b"\x00tfz"
_CODEC_ZSTD = 1
_HEADER = struct.Struct(">4sBQ")
_SAMPLE_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class Compression:
    """When payloads are compressed: `enabled`, above `min_bytes`, when a sample of
    `sample_bytes` shrinks to at most `max_sample_ratio` of its size, at zstd `level`."""

    enabled: bool = True
    min_bytes: int = 64 * 1024
    level: int = 1
    max_sample_ratio: float = 0.9
    sample_bytes: int = _SAMPLE_BYTES

    def __post_init__(self) -> None:
        if self.min_bytes < 0:
            raise ValueError(f"compression min_bytes must be >= 0, got {self.min_bytes}")
        if not -7 <= self.level <= 22:
            raise ValueError(f"compression level must be in -7..22, got {self.level}")
        if not 0 < self.max_sample_ratio <= 1:
            raise ValueError(f"compression max_sample_ratio must be in (0, 1], got {self.max_sample_ratio}")
        if self.sample_bytes < 1:
            raise ValueError(f"compression sample_bytes must be >= 1, got {self.sample_bytes}")


DEFAULT_COMPRESSION = Compression()
OFF = Compression(enabled=False)


def is_compressed(data: bytes | bytearray | memoryview) -> bool:
    """Whether `data` is a compressed frame."""
    return bytes(data[: len(COMPRESSION_MAGIC)]) == COMPRESSION_MAGIC


def encode_payload(data: bytes, policy: Compression = DEFAULT_COMPRESSION) -> bytes:
    """`data` in a compressed frame when that pays under `policy`, else `data` itself."""
    if not policy.enabled or len(data) < policy.min_bytes:
        return data
    compressor = zstandard.ZstdCompressor(level=policy.level)
    if len(data) > policy.sample_bytes and not _sample_pays(compressor, data, policy):
        return data
    compressed = compressor.compress(data)
    if _HEADER.size + len(compressed) >= len(data):
        return data
    return _HEADER.pack(COMPRESSION_MAGIC, _CODEC_ZSTD, len(data)) + compressed


def _sample_pays(compressor: zstandard.ZstdCompressor, data: bytes, policy: Compression) -> bool:
    # the middle of the payload: a pickle's head is opcodes and names, not the bulk of the data
    start = (len(data) - policy.sample_bytes) // 2
    sample = memoryview(data)[start : start + policy.sample_bytes]
    return len(compressor.compress(sample)) <= policy.max_sample_ratio * len(sample)


def decode_payload(data: bytes | bytearray, *, max_bytes: int | None = None) -> bytes | bytearray:
    """The payload inside a compressed frame, or `data` itself when it is not framed.

    Raises `ProtocolError` for a malformed frame, an unknown codec, a declared size above
    `max_bytes`, or compressed bytes that do not decompress to the declared size."""
    if not is_compressed(data):
        return data
    if len(data) < _HEADER.size:
        raise ProtocolError("compressed payload: the frame header is truncated")
    _magic, codec, size = _HEADER.unpack_from(data)
    if codec != _CODEC_ZSTD:
        raise ProtocolError(f"compressed payload: unknown codec {codec}")
    if max_bytes is not None and size > max_bytes:
        raise ProtocolError(f"compressed payload: declares {size} bytes, over the limit of {max_bytes} bytes")
    try:
        out = zstandard.ZstdDecompressor().decompress(memoryview(data)[_HEADER.size :], max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"compressed payload: zstd could not decompress it: {exc}") from None
    if len(out) != size:
        raise ProtocolError(f"compressed payload: decompressed to {len(out)} bytes, the frame declared {size}")
    return out
