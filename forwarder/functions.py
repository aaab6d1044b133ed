"""Function registration: opaque bodies, one id per (owner, content hash)."""

from __future__ import annotations

import hashlib
import uuid

from taskfabric.errors import NotFoundError, PermissionDenied
from taskfabric.forwarder.batching import FunctionBodyCache
from taskfabric.forwarder.records import FunctionRecord, Identity
from taskfabric.forwarder.store import Store, StoreRunner

__all__ = ["FORBIDDEN", "NOT_FOUND", "FunctionRegistry", "content_hash"]

FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"


def content_hash(body: bytes) -> str:
    """The sha256 hex digest identifying a body."""
    return hashlib.sha256(body).hexdigest()


class FunctionRegistry:
    """Register, read, list and delete functions, enforcing ownership."""

    def __init__(self, store: Store, runner: StoreRunner, cache: FunctionBodyCache) -> None:
        self._store = store
        self._runner = runner
        self._cache = cache

    async def register(
        self, identity: Identity, *, name: str, body: bytes, python_version: str
    ) -> tuple[FunctionRecord, bool]:
        """(record, created): the same body registered again by its owner returns the first id."""
        return await self._runner.write(
            self._store.functions.add,
            owner_id=identity.user_id,
            name=name,
            body=body,
            content_hash=content_hash(body),
            python_version=python_version,
        )

    async def get(self, identity: Identity, function_id: uuid.UUID, *, include_body: bool = False) -> FunctionRecord:
        record = await self._runner.read(self._store.functions.get, function_id, include_body=include_body)
        return owned_function(identity, function_id, record)

    async def list(self, identity: Identity) -> list[FunctionRecord]:
        return await self._runner.read(self._store.functions.list, identity.user_id)

    async def delete(self, identity: Identity, function_id: uuid.UUID) -> None:
        await self.get(identity, function_id)
        await self._runner.write(self._store.functions.delete, function_id)
        self._cache.discard(function_id)


def owned_function(identity: Identity, function_id: uuid.UUID, record: FunctionRecord | None) -> FunctionRecord:
    """The record if it exists and is the caller's: else 404 / 403."""
    if record is None:
        raise NotFoundError(f"no function {function_id}", code=NOT_FOUND)
    if record.owner_id != identity.user_id:
        raise PermissionDenied(f"function {function_id} belongs to another user", code=FORBIDDEN)
    return record
