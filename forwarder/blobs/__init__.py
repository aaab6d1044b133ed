"""Blob store: large task results kept outside the SQL store (issue 15, item 1).

A task whose result is larger than `blob_threshold_bytes` keeps, in its `tasks` row, only a
reference, the size and the sha256 digest; the bytes live in a `BlobStore`:

- `FilesystemBlobStore` (the default): files under the forwarder's data folder (`blobs/` next to a
  SQLite store, else `$TASKFABRIC_HOME/forwarder/blobs`);
- `S3BlobStore`: an S3-compatible bucket (boto3), for forwarder replicas that share PostgreSQL.

Who talks to it: only the task table of the store (`forwarder/store/tasks.py`) writes, reads and
deletes blobs; routes, streams, the dashboard and the Globus Compute adapter see result bytes as
before. Blob names are per task (see `blob_name`), so a blob is deleted with its task without
reference counting. Every read checks the digest: a mismatch raises `BlobIntegrityError`.
"""

from __future__ import annotations

from taskfabric.forwarder.blobs.base import (
    BlobError,
    BlobIntegrityError,
    BlobMissing,
    BlobRef,
    BlobStore,
    BlobWriter,
    blob_name,
    read_verified,
)
from taskfabric.forwarder.blobs.filesystem import FilesystemBlobStore
from taskfabric.forwarder.blobs.memory import MemoryBlobStore
from taskfabric.forwarder.blobs.open import open_blob_store

__all__ = [
    "BlobError",
    "BlobIntegrityError",
    "BlobMissing",
    "BlobRef",
    "BlobStore",
    "BlobWriter",
    "FilesystemBlobStore",
    "MemoryBlobStore",
    "blob_name",
    "open_blob_store",
    "read_verified",
]
