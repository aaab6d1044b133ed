"""Length-prefixed frames over the pipes between a manager and its workers.

Each frame is a 4-byte big-endian length followed by that many bytes (a packed protocol message).
`FrameReader` reassembles frames from whatever chunks a non-blocking read returns; `write_frame`
writes one whole frame (blocking until the pipe takes it).
"""

from __future__ import annotations

import os
import struct

__all__ = ["MAX_FRAME_BYTES", "FrameReader", "read_frame", "write_frame"]

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 1 << 30


def write_frame(fd: int, payload: bytes) -> None:
    """Write one frame to `fd` (blocking)."""
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def read_frame(fd: int) -> bytes | None:
    """Read one frame from a blocking `fd`; None at end of file."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes is over the limit")
    return _read_exactly(fd, length) if length else b""


def _read_exactly(fd: int, count: int) -> bytes | None:
    chunks = []
    remaining = count
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class FrameReader:
    """Collects frames from chunks read off a non-blocking pipe."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return the frames it completed."""
        self._buffer += chunk
        frames = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buffer, offset)
            if length > MAX_FRAME_BYTES:
                raise ValueError(f"frame of {length} bytes is over the limit")
            end = offset + _HEADER.size + length
            if end > len(buffer):
                break
            frames.append(bytes(buffer[offset + _HEADER.size : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return frames
