"""Length-prefixed frames between a manager and its workers."""

from __future__ import annotations

import os

from taskfabric.manager.frames import FrameReader, read_frame, write_frame


def test_frames_round_trip_over_a_pipe() -> None:
    read_end, write_end = os.pipe()
    write_frame(write_end, b"hello")
    write_frame(write_end, b"")
    os.close(write_end)
    assert read_frame(read_end) == b"hello"
    assert read_frame(read_end) == b""
    assert read_frame(read_end) is None
    os.close(read_end)


def test_reader_reassembles_split_and_joined_chunks() -> None:
    read_end, write_end = os.pipe()
    write_frame(write_end, b"abc")
    write_frame(write_end, b"x" * 1000)
    os.close(write_end)
    data = os.read(read_end, 10_000)
    os.close(read_end)
    reader = FrameReader()
    frames = []
    for start in range(0, len(data), 7):
        frames.extend(reader.feed(data[start : start + 7]))
    assert frames == [b"abc", b"x" * 1000]
