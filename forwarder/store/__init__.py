"""The forwarder's store: users, tokens, functions, endpoints, tasks and kept dead letters in one
SQL database.

SQLAlchemy Core (no ORM), SQLite by default and PostgreSQL by URL; the schema is created and
migrated when the store opens. Methods are synchronous and batch-oriented; `StoreRunner` runs them
off the event loop (one writer thread, a few reader threads). Every error leaving here is a
`StoreError` (`StoreConflict` for a broken uniqueness rule).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from taskfabric.forwarder.store.dashboard import DashboardQueries
from taskfabric.forwarder.store.dead_letters import DeadLetterTable
from taskfabric.forwarder.store.endpoints import EndpointTable
from taskfabric.forwarder.store.engine import StoreConflict, open_engine, redact_db_url, translate_errors
from taskfabric.forwarder.store.functions import FunctionTable
from taskfabric.forwarder.store.outcomes import Failure
from taskfabric.forwarder.store.runner import StoreRunner
from taskfabric.forwarder.store.schema import migrate
from taskfabric.forwarder.store.tasks import TaskTable
from taskfabric.forwarder.store.users import UserTable

__all__ = ["Failure", "Store", "StoreConflict", "StoreRunner"]

log = logging.getLogger(__name__)


class Store:
    """One database: its tables as `users`, `functions`, `endpoints`, `tasks`, `dead_letters`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.users = UserTable(engine)
        self.functions = FunctionTable(engine)
        self.endpoints = EndpointTable(engine)
        self.tasks = TaskTable(engine)
        self.dead_letters = DeadLetterTable(engine)
        self.dashboard = DashboardQueries(engine)  # read-only aggregates of the web dashboard

    @classmethod
    def open(cls, url: str, *, pool_size: int = 8) -> Store:
        """Open (creating or migrating the schema) the database at `url`."""
        engine = open_engine(url, pool_size=pool_size)
        try:
            with translate_errors(f"opening the store at {redact_db_url(url)}"), engine.begin() as connection:
                version = migrate(connection)
        except BaseException:
            engine.dispose()
            raise
        log.info("store %s open (schema version %d)", redact_db_url(url), version)
        return cls(engine)

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
