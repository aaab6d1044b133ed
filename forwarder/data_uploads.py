"""Arguments uploaded by reference: `PUT /v1/data/{sha256}` stores, `GET /v1/data/{sha256}` reads.

The bytes live in the forwarder's blob store next to large results, named per user and digest
(`data_refs.data_blob_name`), and are swept with them: a blob older than `result_ttl_s` is deleted,
so a reference expires no later than that (`data_ref_ttl_s` caps it further). Every upload rewrites
the blob, which restarts its life; the client uploads the same object once per reference life.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Iterator

from taskfabric.errors import InvalidRequest, NotFoundError, PayloadTooLarge, ServiceError
from taskfabric.forwarder.blobs import BlobMissing, BlobStore
from taskfabric.forwarder.data_refs import DataClaims, DataRefSigner, check_sha256, data_blob_name
from taskfabric.forwarder.records import Identity

__all__ = ["DataRead", "DataUploads"]


@dataclasses.dataclass(frozen=True, slots=True)
class DataRead:
    """An upload to stream to a worker: its signed size and digest, and its chunks as stored."""

    size: int
    sha256: str
    chunks: Iterator[bytes]


class DataUploads:
    """Stores uploads and serves them to holders of a valid reference."""

    def __init__(
        self,
        blobs: BlobStore | None,
        signer: DataRefSigner,
        *,
        max_bytes: int,
        ttl_s: float,
        endpoint_url: str | None = None,
    ) -> None:
        self.blobs = blobs
        self.signer = signer
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: this forwarder's URL as endpoints' workers reach it (None: not configured), answered
        #: with each upload so that the reference names it rather than the client's view
        self.endpoint_url = endpoint_url

    async def put(self, identity: Identity, sha256: str, body: AsyncIterator[bytes]) -> dict[str, object]:
        """Store the body as `identity`'s upload `sha256` and answer its reference (JSON fields).
        400 `DATA_DIGEST_MISMATCH` when the body's sha256 is not the path's; 413 above `max_bytes`."""
        blobs = self._store()
        _require_digest(sha256)
        data = await _read_body(body, self.max_bytes)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise InvalidRequest(
                f"the body's sha256 is {actual}, not the {sha256} named in the path", code="DATA_DIGEST_MISMATCH"
            )
        await asyncio.to_thread(blobs.put, data_blob_name(identity.user_id, sha256), data)
        expires_at = time.time() + self.ttl_s
        claims = DataClaims(user_id=identity.user_id, sha256=sha256, size=len(data), expires_at=expires_at)
        return {
            "sha256": sha256,
            "size": len(data),
            "token": self.signer.sign(claims),
            "expires_at": expires_at,
            "endpoint_url": self.endpoint_url,
        }

    def open(self, sha256: str, token: str | None) -> DataRead:
        """The upload a reference token names. 403 `DATA_REF_INVALID` / `DATA_REF_EXPIRED`,
        404 when the blob is gone (swept, or never uploaded by the token's user)."""
        blobs = self._store()
        _require_digest(sha256)
        if not token:
            raise InvalidRequest("the X-Taskfabric-Data-Ref header is missing", code="DATA_REF_INVALID")
        claims = self.signer.verify(token, sha256=sha256, now=time.time())
        # streamed as stored, not checked here: the worker checks size and digest after the
        # download and fails the task with DATA_INTEGRITY (a check here would cut the body short,
        # which the worker could not tell from a network failure)
        try:
            chunks = blobs.open_chunks(data_blob_name(claims.user_id, sha256))
            first = next(chunks, b"")  # a missing blob is a 404 before any byte is sent
        except BlobMissing:
            raise NotFoundError(f"data {sha256} is no longer stored (expired or deleted)") from None
        return DataRead(size=claims.size, sha256=sha256, chunks=_prepend(first, chunks))

    def _store(self) -> BlobStore:
        if self.blobs is None:
            raise ServiceError("this forwarder has no blob store", status=503, code="SERVICE_UNAVAILABLE")
        return self.blobs


def _require_digest(sha256: str) -> None:
    if not check_sha256(sha256):
        raise InvalidRequest(f"sha256: expected 64 lower-case hex digits, got {sha256[:80]!r}")


async def _read_body(body: AsyncIterator[bytes], max_bytes: int) -> bytes:
    buffer = bytearray()
    async for chunk in body:
        buffer += chunk
        if len(buffer) > max_bytes:
            raise PayloadTooLarge(
                f"the upload is over the limit of {max_bytes} bytes (max_data_bytes)", code="PAYLOAD_TOO_LARGE"
            )
    if not buffer:
        raise InvalidRequest("the upload is empty")
    return bytes(buffer)


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
