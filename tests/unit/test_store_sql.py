"""Chunking for statements whose text grows with the chunk: every item once, in order, few lengths."""

from __future__ import annotations

from taskfabric.forwarder.store._sql import IN_CHUNK, chunks, statement_chunks


def test_statement_chunks_cover_everything_in_order_with_few_lengths() -> None:
    lengths: set[int] = set()
    for total in range(3 * IN_CHUNK + 7):
        items = list(range(total))
        pieces = list(statement_chunks(items))
        assert [item for piece in pieces for item in piece] == items
        for piece in pieces:
            size = len(piece)
            assert size == IN_CHUNK or (size & (size - 1) == 0 and size < IN_CHUNK)
            lengths.add(size)
        assert len(pieces) <= total // IN_CHUNK + IN_CHUNK.bit_length()
    assert len(lengths) == IN_CHUNK.bit_length()  # 1, 2, 4, ... 512


def test_statement_chunks_honour_a_smaller_largest() -> None:
    assert [len(piece) for piece in statement_chunks(list(range(1000)), 300)] == [300, 300, 300, 64, 32, 4]


def test_plain_chunks_are_fixed_size() -> None:
    assert [len(piece) for piece in chunks(list(range(11)), 5)] == [5, 5, 1]
