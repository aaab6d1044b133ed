"""Leases of once-only background jobs: one row per job naming the replica holding it and until when.

A lease is taken or renewed by one upsert that succeeds only when the row is free, expired, or
already ours (`INSERT ... ON CONFLICT DO UPDATE ... WHERE`, atomic on PostgreSQL and SQLite alike):
two replicas racing for an expired lease cannot both win. Times are the replicas' clocks (keep them
in sync, e.g. NTP); a lease's TTL should exceed any clock skew by far.
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import leases

__all__ = ["LeaseTable"]


class LeaseTable:
    """Take, renew, release and read job leases."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def acquire(self, name: str, holder: str, *, now: float, ttl_s: float) -> bool:
        """Take or renew the lease `name` for `holder` until `now + ttl_s`; True if `holder`
        holds it now, False if another holder's lease has not expired."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(leases).values(name=name, holder=holder, expires_at=now + ttl_s)
        statement = insert.on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
            where=(leases.c.holder == insert.excluded.holder) | (leases.c.expires_at < now),
        ).returning(leases.c.holder)
        with translate_errors(f"taking the lease {name!r}"), self._engine.begin() as connection:
            return connection.execute(statement).first() is not None

    def release(self, name: str, holder: str) -> None:
        """Give the lease up (only if `holder` holds it): another replica may take it at once."""
        statement = delete(leases).where(leases.c.name == name, leases.c.holder == holder)
        with translate_errors(f"releasing the lease {name!r}"), self._engine.begin() as connection:
            connection.execute(statement)

    def holders(self, *, now: float) -> dict[str, str]:
        """Job name -> the holder of its unexpired lease."""
        query = select(leases.c.name, leases.c.holder).where(leases.c.expires_at >= now)
        with translate_errors("reading the leases"), self._engine.connect() as connection:
            return {str(name): str(holder) for name, holder in connection.execute(query)}
