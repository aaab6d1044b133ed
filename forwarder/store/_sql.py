"""Small helpers shared by the store's tables: chunking `IN` lists and cleaning untrusted text.

Statements whose text grows with the chunk (`IN (?, ?, ...)`, `VALUES (...), (...)`) are cut by
`statement_chunks` into a few fixed lengths. Database drivers cache prepared statements by their
text (Python's sqlite3 keeps 128 per connection), and a prepared 1,000-row statement holds over a
megabyte: with a length per batch size, a busy forwarder's pool grew by ~600 bytes per task until
every connection's cache was full of one-off statements.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["IN_CHUNK", "chunks", "clean_text", "statement_chunks"]

_T = TypeVar("_T")

#: the longest `IN (...)` list: below SQLite's oldest bound-parameter limit (999)
IN_CHUNK = 512


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """Consecutive slices of `size` items (the last one shorter): for statements of fixed text."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def statement_chunks(items: Sequence[_T], largest: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    """Consecutive slices whose lengths are `largest` or a power of two below it, so a statement
    built per slice has at most about log2(largest) + 1 distinct texts (see the module docstring)."""
    start, total = 0, len(items)
    while start < total:
        left = total - start
        size = largest if left >= largest else 1 << (left.bit_length() - 1)
        yield items[start : start + size]
        start += size


def clean_text(value: str | None, limit: int) -> str:
    """Text from an untrusted peer made storable everywhere: at most `limit` characters, no NUL
    (PostgreSQL refuses it) and no lone surrogates (they do not encode as UTF-8)."""
    if not value:
        return ""
    text = value[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
