"""Once-only background jobs across forwarder replicas: a lease per job in the store.

Every replica runs `LeaseKeeper.keep()`: every `ttl_s / 3` it takes or renews each job's lease
(store/leases.py: one atomic upsert per job). A job runs on a replica only while that replica
holds its lease, so exactly one replica expires old results or rebuilds broken queues at a time.
A replica killed -9 stops renewing: its leases expire after `ttl_s` and another replica takes them
at its next renewal; a replica stopping cleanly releases them at once. With SQLite there is one
forwarder process: its leases are held without asking the store (`exclusive`), so a forwarder
restarted after a crash does not wait out its predecessor's leases.

Jobs every replica must run itself take no lease: syncing its own result consumers, examining the
queues (each replica stops consuming a broken one; only the `rebuild-queues` holder rebuilds it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from taskfabric.errors import TaskfabricError
from taskfabric.forwarder.store import Store, StoreRunner

__all__ = ["LeaseKeeper", "replica_name"]

log = logging.getLogger(__name__)


def replica_name(replica_id: uuid.UUID) -> str:
    """How a replica names itself in leases and logs: host, process id, replica id."""
    return f"{socket.gethostname()}:{os.getpid()}:{replica_id}"


class LeaseKeeper:
    """Takes and renews the leases `names` for `holder`; `held(name)` says if a job may run."""

    def __init__(
        self,
        store: Store,
        runner: StoreRunner,
        *,
        holder: str,
        names: Sequence[str],
        ttl_s: float,
        exclusive: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`exclusive`: no other replica can exist (SQLite): every lease is held, nothing is written."""
        self.holder = holder
        self._exclusive = exclusive
        self._store = store
        self._runner = runner
        self._names = tuple(names)
        self._ttl_s = ttl_s
        self._clock = clock
        #: job name -> until when this replica holds it (by its own clock, a margin before the row's expiry)
        self._held_until: dict[str, float] = {}

    @property
    def renew_s(self) -> float:
        return self._ttl_s / 3

    def held(self, name: str) -> bool:
        return self._exclusive or self._held_until.get(name, 0.0) > self._clock()

    async def renew(self) -> None:
        """Take or renew every lease once."""
        if self._exclusive:
            return
        for name in self._names:
            now = self._clock()
            try:
                won = await self._runner.write(
                    self._store.leases.acquire, name, self.holder, now=now, ttl_s=self._ttl_s
                )
            except TaskfabricError as exc:
                log.warning("could not renew the lease %r: %s", name, exc)
                continue  # keep what we had until it runs out (held() checks the time)
            was_held = self.held(name)
            # stop a renew period before the row expires: another replica may take it right then
            self._held_until[name] = now + self._ttl_s - self.renew_s if won else 0.0
            if won and not was_held:
                log.info("took the lease %r", name)
            elif was_held and not won:
                log.warning("lost the lease %r to another replica", name)

    async def keep(self) -> None:
        """Renew the leases until cancelled."""
        while True:
            await self.renew()
            await asyncio.sleep(self.renew_s)

    async def release_all(self) -> None:
        """Give up every lease held (on a clean stop: another replica takes them at once)."""
        for name in self._names:
            if self._held_until.pop(name, 0.0):
                try:
                    await self._runner.write(self._store.leases.release, name, self.holder)
                except TaskfabricError as exc:
                    log.info("could not release the lease %r: %s", name, exc)

    def guarded(self, name: str, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`job`, run only while this replica holds the lease `name`."""

        async def run_if_held() -> None:
            if self.held(name):
                await job()

        run_if_held.__name__ = getattr(job, "__name__", name)
        return run_if_held
