"""The forwarder's store: users, tokens, functions, endpoints, tasks and kept dead letters in one
SQL database.

SQLAlchemy Core (no ORM), SQLite by default and PostgreSQL by URL; the schema is created in an
empty database when the store opens, and migrated only when the opener asks (`upgrade=True`:
`taskfabric forwarder migrate`, `serve --migrate`); see `versions`. Methods are synchronous and
batch-oriented; `StoreRunner` runs them off the event loop (one writer thread, a few reader
threads). Every error leaving here is a `StoreError` (`StoreConflict` for a broken uniqueness rule).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from taskfabric.forwarder.blobs import BlobStore
from taskfabric.forwarder.store import versions as _versions
from taskfabric.forwarder.store.access import AccessTable
from taskfabric.forwarder.store.compute_groups import ComputeGroupTable
from taskfabric.forwarder.store.dashboard import DashboardQueries
from taskfabric.forwarder.store.dead_letters import DeadLetterTable
from taskfabric.forwarder.store.endpoints import EndpointTable
from taskfabric.forwarder.store.engine import StoreConflict, open_engine, redact_db_url, translate_errors
from taskfabric.forwarder.store.function_access import FunctionAccessTable
from taskfabric.forwarder.store.functions import FunctionTable
from taskfabric.forwarder.store.grants import GrantTable
from taskfabric.forwarder.store.groups import GroupTable
from taskfabric.forwarder.store.leases import LeaseTable
from taskfabric.forwarder.store.outcomes import Failure
from taskfabric.forwarder.store.quotas import QuotaTable
from taskfabric.forwarder.store.runner import StoreRunner
from taskfabric.forwarder.store.schema import migrate
from taskfabric.forwarder.store.tasks import DEFAULT_BLOB_THRESHOLD_BYTES, TaskTable
from taskfabric.forwarder.store.users import UserTable
from taskfabric.forwarder.store.versions import SchemaStatus, StoreMissing, StoreNeedsMigration, StoreTooNew

__all__ = [
    "Failure",
    "SchemaStatus",
    "Store",
    "StoreConflict",
    "StoreMissing",
    "StoreNeedsMigration",
    "StoreRunner",
    "StoreTooNew",
]

log = logging.getLogger(__name__)


class Store:
    """One database: its tables as `users`, `functions`, `endpoints`, `tasks`, `dead_letters`,
    the counts behind per-user quotas as `quotas`, and what sharing reads (groups, grants, the
    sharing audit) as `access`. With `blobs`, results larger than `blob_threshold_bytes` are kept
    there, the rows keeping their reference, size and digest."""

    def __init__(
        self,
        engine: Engine,
        *,
        blobs: BlobStore | None = None,
        blob_threshold_bytes: int = DEFAULT_BLOB_THRESHOLD_BYTES,
    ) -> None:
        self.engine = engine
        self.users = UserTable(engine)
        self.functions = FunctionTable(engine)
        self.endpoints = EndpointTable(engine)
        self.tasks = TaskTable(engine, blobs=blobs, blob_threshold_bytes=blob_threshold_bytes)
        self.dead_letters = DeadLetterTable(engine)
        self.quotas = QuotaTable(engine)
        self.access = AccessTable(engine)  # what sharing decisions read, and the sharing audit
        self.function_access = FunctionAccessTable(engine)  # function sharing and endpoint allow-lists (writes)
        self.dashboard = DashboardQueries(engine)  # read-only aggregates of the web dashboard
        self.grants = GrantTable(engine)  # endpoint sharing's writes (forwarder/endpoint_sharing.py)
        self.groups = GroupTable(engine)  # sharing: groups and their members
        self.compute_groups = ComputeGroupTable(engine)  # Globus Compute task groups with a result queue
        self.leases = LeaseTable(engine)  # once-only background jobs of forwarder replicas

    @classmethod
    def open(
        cls,
        url: str,
        *,
        pool_size: int = 8,
        create: bool = True,
        upgrade: bool = False,
        blobs: BlobStore | None = None,
        blob_threshold_bytes: int = DEFAULT_BLOB_THRESHOLD_BYTES,
    ) -> Store:
        """Open the database at `url`. An empty one gets the schema when `create` (else
        `StoreMissing`, and a SQLite file is not even created); an older schema is migrated when
        `upgrade` (else `StoreNeedsMigration`); a newer one is `StoreTooNew`. `blobs`: where large
        results go (see `Store`)."""
        where = redact_db_url(url)
        if not create and _sqlite_file_missing(url):
            raise _versions.missing(where)
        engine = open_engine(url, pool_size=pool_size)
        try:
            with translate_errors(f"opening the store at {where}"), engine.begin() as connection:
                version = _bring_up_to_date(connection, where, create=create, upgrade=upgrade)
        except BaseException:
            engine.dispose()
            raise
        log.info("store %s open (schema version %d)", where, version)
        return cls(engine, blobs=blobs, blob_threshold_bytes=blob_threshold_bytes)

    @staticmethod
    def status(url: str) -> SchemaStatus:
        """The schema version at `url`, changing nothing (a missing SQLite file: version 0)."""
        if _sqlite_file_missing(url):
            return SchemaStatus(0)
        engine = open_engine(url, pool_size=1)
        try:
            with translate_errors(f"reading the store at {redact_db_url(url)}"), engine.connect() as connection:
                return _versions.schema_status(connection)
        finally:
            engine.dispose()

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    def ping(self) -> None:
        """One trivial query: raises `StoreError` when the database does not answer."""
        with translate_errors("checking the store"), self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1").scalar()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bring_up_to_date(connection: Connection, where: str, *, create: bool, upgrade: bool) -> int:
    status = _versions.schema_status(connection)
    if status.newer:
        raise _versions.too_new(where, status)
    if status.empty and not create:
        raise _versions.missing(where)
    if status.older and not upgrade:
        raise _versions.needs_migration(where, status)
    if status.version != status.latest:
        log.info("store %s: schema version %d -> %d", where, status.version, status.latest)
    return migrate(connection)


def _sqlite_file_missing(url: str) -> bool:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False  # open_engine names the problem
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    return not Path(database).expanduser().exists()
