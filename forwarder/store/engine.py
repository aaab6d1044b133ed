"""Opening the database: SQLite (WAL, synchronous=NORMAL, foreign keys) or PostgreSQL by URL,
and the one place SQLAlchemy's errors become `StoreError`."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from taskfabric.errors import ConfigError, StoreError
from taskfabric.private_files import open_private, private_folder

__all__ = ["StoreConflict", "open_engine", "redact_db_url", "translate_errors"]

log = logging.getLogger(__name__)

_SQLITE_BUSY_TIMEOUT_MS = 30000


class StoreConflict(StoreError):
    """A write broke a uniqueness rule (e.g. two registrations racing for one name)."""


def redact_db_url(url: str) -> str:
    """The URL without its password (safe to log)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn SQLAlchemy (and driver) errors raised inside into `StoreError`/`StoreConflict`."""
    try:
        yield
    except IntegrityError as exc:
        raise StoreConflict(f"{what}: conflicting write ({type(exc.orig).__name__})") from None
    except SQLAlchemyError as exc:
        raise StoreError(f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None


def open_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for `url`; SQLite databases (and their folder) are created on first use."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("not a valid SQLAlchemy URL", key="database_url") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _open_sqlite(url, parsed.database)
    if backend == "postgresql":
        try:
            with translate_errors("opening the database"):
                return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        except ImportError as exc:
            raise ConfigError(f"the PostgreSQL driver is missing ({exc}): pip install 'psycopg[binary]'") from None
    raise ConfigError(f"unsupported database {backend!r} (use sqlite:/// or postgresql+psycopg://)", key="database_url")


def _open_sqlite(url: str, database: str | None) -> Engine:
    if not database or database == ":memory:":
        raise ConfigError("SQLite needs a file (sqlite:///PATH), not an in-memory database", key="database_url")
    _create_private(Path(database).expanduser())
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _create_private(path: Path) -> None:
    """Make the database file 0600 in a 0700 folder before SQLite opens it (SQLite would make it
    0644 under the usual umask; its -wal and -shm files copy the database file's mode)."""
    private_folder(path.parent)
    os.close(open_private(path, os.O_RDWR))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()
