"""Large results uploaded by the worker (issue 15): grants, receipts, and the upload itself.

See `taskfabric.protocol.result_uploads` for the exchange. Here:

- `ResultUploadSigner` mints a task's grant when the forwarder publishes it ("the holder may upload
  at most N bytes as task T's result until E") and the receipt of an upload ("the forwarder wrote
  blob B of size S and sha256 D for task T"), and checks both. Its key is derived from the data
  reference key, so a data reference is neither a grant nor a receipt.
- `ResultUploads.put` streams an upload into the blob store (never whole in memory with the
  filesystem store) under a fresh per-task blob name; the ingest records it only when the result
  naming it carries a valid receipt (`ResultLimits.screen`), from the endpoint the task is on (the
  store's guard). An upload whose result never comes is swept with expired results.

Pure signing code and one async method; no HTTP framework here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator

from taskfabric.errors import InvalidRequest, PayloadTooLarge, PermissionDenied, ServiceError
from taskfabric.forwarder import b64url
from taskfabric.forwarder.blobs import BlobRef, BlobStore, BlobWriter, blob_name
from taskfabric.forwarder.fresh_uploads import FreshUploads
from taskfabric.protocol import ResultBlob

__all__ = ["GrantClaims", "ResultUploadSigner", "ResultUploads", "UploadOffer"]

_DERIVATION = b"taskfabric result uploads v1"
#: an upload's chunks are gathered to this size before a write (one thread hop per write)
_WRITE_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class GrantClaims:
    """What a valid grant says: task `task_id`'s result, at most `max_bytes`, until `expires_at`."""

    task_id: uuid.UUID
    max_bytes: int
    expires_at: float


class ResultUploadSigner:
    """Signs and checks result upload grants and receipts."""

    def __init__(self, data_ref_key: bytes) -> None:
        self._key = hmac.new(data_ref_key, _DERIVATION, hashlib.sha256).digest()

    def grant(self, claims: GrantClaims) -> str:
        # the claims' JSON (as `json.dumps` with compact separators writes it) built by hand, and a
        # one-shot HMAC: the forwarder mints one grant per task it publishes
        body = f'{{"t":"{claims.task_id.hex}","n":{int(claims.max_bytes)},"e":{round(claims.expires_at, 3)!r}}}'
        encoded = b64url.encode(body.encode())
        return f"{encoded}.{b64url.encode(self._mac(encoded.encode()))}"

    def verify_grant(self, grant: str | None, *, task_id: uuid.UUID, now: float) -> GrantClaims:
        """The grant's claims; raises `PermissionDenied` (`RESULT_GRANT_INVALID`) when it is missing,
        malformed, not signed here or for another task, or expired."""
        if not grant or len(grant) > 512:
            raise _invalid("the X-Taskfabric-Result-Grant header is missing or malformed")
        encoded, _, mac = grant.partition(".")
        try:
            given = b64url.decode(mac)
        except ValueError:
            raise _invalid("the result upload grant is malformed") from None
        if not hmac.compare_digest(given, self._mac(encoded.encode())):
            raise _invalid("the result upload grant's signature does not match (altered, or from another forwarder)")
        try:
            raw = json.loads(b64url.decode(encoded))
            claims = GrantClaims(
                task_id=uuid.UUID(hex=str(raw["t"])), max_bytes=int(raw["n"]), expires_at=float(raw["e"])
            )
        except (ValueError, KeyError, TypeError):
            raise _invalid("the result upload grant's claims are malformed") from None
        if claims.task_id != task_id:
            raise _invalid("the result upload grant was issued for another task")
        if claims.expires_at <= now:
            raise _invalid("the result upload grant has expired")
        return claims

    def receipt(self, task_id: uuid.UUID, ref: BlobRef) -> str:
        return b64url.encode(self._mac(f"{task_id.hex}|{ref.name}|{ref.size}|{ref.sha256}".encode()))

    def check_receipt(self, task_id: uuid.UUID, blob: ResultBlob) -> bool:
        """Whether `blob` is one this forwarder wrote for `task_id` (name, size and digest)."""
        ref = BlobRef(name=blob.name, size=blob.size, sha256=blob.sha256)
        return hmac.compare_digest(blob.receipt, self.receipt(task_id, ref))

    def _mac(self, data: bytes) -> bytes:
        return hmac.digest(self._key, data, "sha256")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class UploadOffer:
    """What the forwarder offers each task it publishes: upload a result larger than
    `threshold_bytes` (up to `max_bytes`) to `url`, with a grant valid `ttl_s`."""

    url: str
    threshold_bytes: int
    max_bytes: int
    ttl_s: float
    signer: ResultUploadSigner

    def grant_for(self, task_id: uuid.UUID, now: float) -> str:
        return self.signer.grant(GrantClaims(task_id=task_id, max_bytes=self.max_bytes, expires_at=now + self.ttl_s))


class ResultUploads:
    """Stores results that workers upload with a grant; with `fresh`, uploads small enough are
    also kept in memory until their result is reported (see `fresh_uploads`)."""

    def __init__(self, blobs: BlobStore | None, signer: ResultUploadSigner, fresh: FreshUploads | None = None) -> None:
        self.blobs = blobs
        self.signer = signer
        self.fresh = fresh

    async def put(
        self, task_id: uuid.UUID, grant: str | None, body: AsyncIterator[bytes], *, now: float, size: int | None = None
    ) -> ResultBlob:
        """Stream `body` into a new blob for `task_id` and answer its reference and receipt.
        `size` is the body's declared length, if any (an upload that fits in `fresh` is then read
        whole and written once). 403 `RESULT_GRANT_INVALID`; 413 above the grant's size; 400 for
        an empty body."""
        if self.blobs is None:
            raise ServiceError("this forwarder has no blob store", status=503, code="SERVICE_UNAVAILABLE")
        claims = self.signer.verify_grant(grant, task_id=task_id, now=now)
        if size is not None and size > claims.max_bytes:
            raise _too_large(claims)
        name = blob_name(task_id)
        if self.fresh is not None and size is not None and self.fresh.fits(size):
            # small enough to hold: read whole, stored in one go off the loop, kept for the stream
            data = await _read_declared(body, size)
            ref = await asyncio.to_thread(self.blobs.put, name, data)
            self.fresh.remember(ref.name, data)
        else:
            writer = await asyncio.to_thread(self.blobs.open_writer, name)
            try:
                ref = await _stream_into(writer, body, claims)
            except BaseException:
                await asyncio.to_thread(writer.abort)
                raise
        return ResultBlob(name=ref.name, size=ref.size, sha256=ref.sha256, receipt=self.signer.receipt(task_id, ref))


async def _read_declared(body: AsyncIterator[bytes], size: int) -> bytes:
    """A body of `size` declared bytes, joined once at the end (one copy of it in all)."""
    chunks: list[bytes] = []
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > size:
            raise InvalidRequest("the uploaded result is longer than its Content-Length")
        chunks.append(chunk)
    if received != size:
        raise InvalidRequest(f"the uploaded result ended after {received} of its {size} declared bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _stream_into(writer: BlobWriter, body: AsyncIterator[bytes], claims: GrantClaims) -> BlobRef:
    """Write `body` a few MiB at a time (never whole in memory) within the grant's size."""
    pending = bytearray()
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > claims.max_bytes:
            raise _too_large(claims)
        pending += chunk
        if len(pending) >= _WRITE_BYTES:
            await asyncio.to_thread(writer.write, bytes(pending))
            pending.clear()
    if received == 0:
        raise InvalidRequest("the uploaded result is empty")
    return await asyncio.to_thread(_finish, writer, bytes(pending))


def _too_large(claims: GrantClaims) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the result is over the limit of {claims.max_bytes} bytes (quotas.max_result_bytes)", code="PAYLOAD_TOO_LARGE"
    )


def _finish(writer: BlobWriter, last: bytes) -> BlobRef:
    if last:
        writer.write(last)
    return writer.commit()


def _invalid(message: str) -> PermissionDenied:
    return PermissionDenied(message, code="RESULT_GRANT_INVALID")
