"""Registered functions: opaque bodies, deduplicated per owner by content hash."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, Row, select

from taskfabric.forwarder.records import FunctionRecord
from taskfabric.forwarder.store._sql import statement_chunks
from taskfabric.forwarder.store.engine import StoreConflict, translate_errors
from taskfabric.forwarder.store.schema import functions

__all__ = ["FUNCTION_INFO_COLUMNS", "FunctionTable", "function_record"]

FUNCTION_INFO_COLUMNS = [
    functions.c.function_id,
    functions.c.owner_id,
    functions.c.name,
    functions.c.content_hash,
    functions.c.python_version,
    functions.c.size_bytes,
    functions.c.created_at,
    functions.c.description,
    functions.c.public,
]


class FunctionTable:
    """Reads and writes of `functions`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(
        self,
        *,
        owner_id: uuid.UUID,
        name: str,
        body: bytes,
        content_hash: str,
        python_version: str,
        description: str | None = None,
        public: bool | None = None,
    ) -> tuple[FunctionRecord, bool]:
        """Store a function, or find the owner's function with the same hash; (record, created).
        The same body again keeps its id; a `description` or `public` given then replaces the
        stored one (None: keep it)."""
        existing = self.find_by_hash(owner_id, content_hash)
        if existing is not None:
            return self._restate(existing, description=description, public=public), False
        record = FunctionRecord(
            function_id=uuid.uuid4(),
            owner_id=owner_id,
            name=name,
            content_hash=content_hash,
            python_version=python_version,
            size_bytes=len(body),
            created_at=time.time(),
            description=description or "",
            public=bool(public),
        )
        try:
            with translate_errors("registering a function"), self._engine.begin() as connection:
                connection.execute(
                    functions.insert().values(
                        function_id=record.function_id,
                        owner_id=owner_id,
                        name=name,
                        body=body,
                        content_hash=content_hash,
                        python_version=python_version,
                        size_bytes=len(body),
                        created_at=record.created_at,
                        description=record.description,
                        public=record.public,
                    )
                )
        except StoreConflict:  # the same body registered concurrently
            existing = self.find_by_hash(owner_id, content_hash)
            if existing is None:
                raise
            return self._restate(existing, description=description, public=public), False
        return record, True

    def _restate(self, record: FunctionRecord, *, description: str | None, public: bool | None) -> FunctionRecord:
        """A registration of an existing body: update what it states differently."""
        changes: dict[str, Any] = {}
        if description is not None and description != record.description:
            changes["description"] = description
        if public is not None and public != record.public:
            changes["public"] = public
        if not changes:
            return record
        with translate_errors("updating a function"), self._engine.begin() as connection:
            connection.execute(
                functions.update().where(functions.c.function_id == record.function_id).values(**changes)
            )
        return dataclasses.replace(record, **changes)

    def find_by_hash(self, owner_id: uuid.UUID, content_hash: str) -> FunctionRecord | None:
        query = select(*FUNCTION_INFO_COLUMNS).where(
            functions.c.owner_id == owner_id, functions.c.content_hash == content_hash
        )
        with translate_errors("looking up a function"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        return function_record(row) if row is not None else None

    def get(self, function_id: uuid.UUID, *, include_body: bool = False) -> FunctionRecord | None:
        columns = [*FUNCTION_INFO_COLUMNS, functions.c.body] if include_body else FUNCTION_INFO_COLUMNS
        with translate_errors("reading a function"), self._engine.connect() as connection:
            row = connection.execute(select(*columns).where(functions.c.function_id == function_id)).first()
        return function_record(row) if row is not None else None

    def list(self, owner_id: uuid.UUID) -> list[FunctionRecord]:
        query = select(*FUNCTION_INFO_COLUMNS).where(functions.c.owner_id == owner_id).order_by(functions.c.created_at)
        with translate_errors("listing functions"), self._engine.connect() as connection:
            return [function_record(row) for row in connection.execute(query)]

    def delete(self, function_id: uuid.UUID) -> bool:
        with translate_errors("deleting a function"), self._engine.begin() as connection:
            deleted = connection.execute(functions.delete().where(functions.c.function_id == function_id))
        return bool(deleted.rowcount)

    def owners(self, function_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """function id -> owner id, for the ids that exist."""
        ids = list(set(function_ids))
        found: dict[uuid.UUID, uuid.UUID] = {}
        with translate_errors("checking functions"), self._engine.connect() as connection:
            for chunk in statement_chunks(ids):
                query = select(functions.c.function_id, functions.c.owner_id).where(functions.c.function_id.in_(chunk))
                found.update({row.function_id: row.owner_id for row in connection.execute(query)})
        return found

    def bodies(self, function_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[bytes, str]]:
        """function id -> (body, python_version), for the ids that exist."""
        found: dict[uuid.UUID, tuple[bytes, str]] = {}
        with translate_errors("reading function bodies"), self._engine.connect() as connection:
            for chunk in statement_chunks(function_ids):
                query = select(functions.c.function_id, functions.c.body, functions.c.python_version).where(
                    functions.c.function_id.in_(chunk)
                )
                found.update(
                    {row.function_id: (bytes(row.body), row.python_version) for row in connection.execute(query)}
                )
        return found


def function_record(row: Row[Any] | Any) -> FunctionRecord:
    mapping = row._mapping
    body = mapping.get("body")
    return FunctionRecord(
        function_id=mapping["function_id"],
        owner_id=mapping["owner_id"],
        name=mapping["name"],
        content_hash=mapping["content_hash"],
        python_version=mapping["python_version"],
        size_bytes=mapping["size_bytes"],
        created_at=mapping["created_at"],
        body=bytes(body) if body is not None else None,
        description=mapping.get("description") or "",
        public=bool(mapping.get("public")),
    )
