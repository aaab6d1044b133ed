"""Which schema version a database holds, and the refusals that follow from it.

`Store.open` asks `schema_status` before it touches anything: an empty database gets the schema
(when the caller may create one), an older schema is upgraded only when the caller says so
(`taskfabric forwarder migrate`, `serve --migrate`), and a newer one is always refused, because
this code does not know what a later version's columns mean.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy import Connection, inspect, select

from taskfabric.errors import StoreError
from taskfabric.forwarder.store.schema import MIGRATIONS, schema_version

__all__ = [
    "LATEST_VERSION",
    "SchemaStatus",
    "StoreMissing",
    "StoreNeedsMigration",
    "StoreTooNew",
    "schema_status",
]

#: the version this code's tables have
LATEST_VERSION = len(MIGRATIONS)


class StoreMissing(StoreError):
    """There is no store where the settings point (and the caller may not create one)."""


class StoreNeedsMigration(StoreError):
    """The store's schema is older than this code's: an explicit `forwarder migrate` is due."""


class StoreTooNew(StoreError):
    """The store's schema is newer than this code's (a later taskfabric migrated it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaStatus:
    """`version` 0: an empty database (no taskfabric tables yet)."""

    version: int
    latest: int = LATEST_VERSION

    @property
    def empty(self) -> bool:
        return self.version == 0

    @property
    def older(self) -> bool:
        return 0 < self.version < self.latest

    @property
    def newer(self) -> bool:
        return self.version > self.latest


def schema_status(connection: Connection) -> SchemaStatus:
    """The version recorded in `schema_version` (0 when the table or its row is missing)."""
    if not inspect(connection).has_table(schema_version.name):
        return SchemaStatus(0)
    version = connection.execute(select(schema_version.c.version)).scalar()
    return SchemaStatus(int(version or 0))


def too_new(where: str, status: SchemaStatus) -> StoreTooNew:
    return StoreTooNew(
        f"the store at {where} has schema version {status.version}, newer than this taskfabric knows "
        f"({status.latest}): upgrade taskfabric, or point --config/--database-url at another store"
    )


def needs_migration(where: str, status: SchemaStatus) -> StoreNeedsMigration:
    return StoreNeedsMigration(
        f"the store at {where} has schema version {status.version}; this taskfabric needs {status.latest}. Back it "
        "up, then run `taskfabric forwarder migrate --config FILE` (or start `forwarder serve` with --migrate)"
    )


def missing(where: str) -> StoreMissing:
    return StoreMissing(
        f"there is no taskfabric store at {where}; refusing to create one here. Name the forwarder's settings file "
        "with --config (or TASKFABRIC_FORWARDER_CONFIG), or create the store with "
        "`taskfabric forwarder migrate --config FILE`"
    )
