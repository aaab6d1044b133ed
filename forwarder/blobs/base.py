"""The blob store interface, the reference a task row keeps, and the typed errors."""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import secrets
import uuid
from collections.abc import Iterator

from taskfabric.errors import StoreError

__all__ = [
    "BlobError",
    "BlobIntegrityError",
    "BlobMissing",
    "BlobRef",
    "BlobStore",
    "BlobWriter",
    "blob_name",
    "read_verified",
]

#: bytes per chunk when a blob is streamed
CHUNK_BYTES = 1024 * 1024


class BlobError(StoreError):
    """The blob store failed (I/O, the S3 server)."""


class BlobMissing(BlobError):
    """A referenced blob is not in the blob store (deleted, or the store was moved)."""


class BlobIntegrityError(BlobError):
    """A blob's bytes do not match the size and sha256 digest its task row recorded."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


@dataclasses.dataclass(frozen=True, slots=True)
class BlobRef:
    """What a task row keeps instead of the bytes: the blob's name, size and sha256 (hex)."""

    name: str
    size: int
    sha256: str


def blob_name(task_id: uuid.UUID) -> str:
    """A fresh name for one task's result: `<2 hex>/<task id>-<random>`.

    Per task, not content-addressed: a blob is then deleted with its task without reference
    counting. The random part keeps two writers of the same task (a result reported twice, two
    forwarder replicas) from overwriting each other: the one whose row update loses deletes only
    its own blob."""
    return f"{task_id.hex[:2]}/{task_id.hex}-{secrets.token_hex(8)}"


class BlobWriter:
    """One blob written a chunk at a time (an upload streamed in): `commit()` makes it visible
    as a whole and answers its reference; `abort()` drops it. This one buffers the chunks and
    stores them at commit (memory, S3); `FilesystemBlobStore` writes them to disk as they come."""

    def __init__(self, store: BlobStore, name: str) -> None:
        self.store = store
        self.name = name
        self.size = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()

    def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        self._buffer += chunk

    def commit(self) -> BlobRef:
        self._commit()
        return BlobRef(name=self.name, size=self.size, sha256=self._digest.hexdigest())

    def _commit(self) -> None:
        self.store._write(self.name, memoryview(self._buffer))
        self._buffer = bytearray()

    def abort(self) -> None:
        self._buffer = bytearray()


class BlobStore(abc.ABC):
    """Where large results live. Implementations are thread-safe (the store's threads share one)."""

    def put(self, name: str, data: bytes | memoryview) -> BlobRef:
        """Store `data` as `name` (atomically: a reader sees all of it or nothing)."""
        digest = hashlib.sha256(data).hexdigest()
        self._write(name, data)
        return BlobRef(name=name, size=len(data), sha256=digest)

    def open_writer(self, name: str) -> BlobWriter:
        """A writer for blob `name`, filled a chunk at a time (see `BlobWriter`)."""
        return BlobWriter(self, name)

    @abc.abstractmethod
    def _write(self, name: str, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def open_chunks(self, name: str) -> Iterator[bytes]:
        """The blob's bytes, a chunk at a time (not checked: see `read_verified`/`stream_verified`).
        Raises `BlobMissing`."""

    @abc.abstractmethod
    def delete(self, names: list[str]) -> None:
        """Delete these blobs; a missing one is not an error."""

    @abc.abstractmethod
    def sweep(self, before: float) -> int:
        """Delete blobs written before `before` (epoch seconds): results that expired, and blobs a
        crash left without a row. Returns how many."""

    @abc.abstractmethod
    def usage_bytes(self) -> int:
        """Bytes held by every blob (operators, tests)."""

    def stream_verified(self, ref: BlobRef) -> Iterator[bytes]:
        """The blob's chunks; after the last one the size and digest are checked, so a consumer
        that streams raises `BlobIntegrityError` (before the end of the body) on a mismatch."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.open_chunks(ref.name):
            digest.update(chunk)
            size += len(chunk)
            if size > ref.size:
                raise _mismatch(ref)
            yield chunk
        if size != ref.size or digest.hexdigest() != ref.sha256:
            raise _mismatch(ref)


def read_verified(store: BlobStore, ref: BlobRef) -> bytes:
    """The whole blob, checked against `ref` (raises `BlobIntegrityError`, `BlobMissing`)."""
    buffer = bytearray()
    for chunk in store.stream_verified(ref):
        buffer += chunk
    return bytes(buffer)


def _mismatch(ref: BlobRef) -> BlobIntegrityError:
    return BlobIntegrityError(
        f"blob {ref.name} does not match its recorded size ({ref.size}) and sha256", name=ref.name
    )
