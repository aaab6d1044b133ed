"""Leases of once-only jobs shared by forwarder replicas, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from taskfabric.forwarder.leases import LeaseKeeper
from taskfabric.forwarder.store import Store, StoreRunner


def test_replica_lease_is_held_by_one_holder_until_it_expires(store: Store) -> None:
    leases = store.leases
    assert leases.acquire("expire-results", "replica-a", now=1000.0, ttl_s=30.0)
    assert not leases.acquire("expire-results", "replica-b", now=1010.0, ttl_s=30.0)
    assert leases.acquire("expire-results", "replica-a", now=1020.0, ttl_s=30.0)  # renewed to 1050
    assert not leases.acquire("expire-results", "replica-b", now=1049.0, ttl_s=30.0)
    assert leases.holders(now=1049.0) == {"expire-results": "replica-a"}
    assert leases.acquire("expire-results", "replica-b", now=1051.0, ttl_s=30.0)  # a's lease ran out
    assert not leases.acquire("expire-results", "replica-a", now=1052.0, ttl_s=30.0)
    assert leases.holders(now=1052.0) == {"expire-results": "replica-b"}


def test_replica_lease_released_is_free_at_once_and_leases_are_per_job(store: Store) -> None:
    leases = store.leases
    assert leases.acquire("rebuild-queues", "replica-a", now=1000.0, ttl_s=30.0)
    assert leases.acquire("expire-results", "replica-b", now=1000.0, ttl_s=30.0)
    leases.release("rebuild-queues", "replica-b")  # not b's: nothing happens
    assert not leases.acquire("rebuild-queues", "replica-b", now=1001.0, ttl_s=30.0)
    leases.release("rebuild-queues", "replica-a")
    assert leases.acquire("rebuild-queues", "replica-b", now=1002.0, ttl_s=30.0)
    assert leases.holders(now=1002.0) == {"rebuild-queues": "replica-b", "expire-results": "replica-b"}


def test_replica_lease_keepers_run_a_job_on_one_replica(store: Store) -> None:
    now = [1000.0]
    runner = StoreRunner(read_threads=1)
    ran: list[str] = []

    def keeper(name: str) -> LeaseKeeper:
        return LeaseKeeper(store, runner, holder=name, names=["job"], ttl_s=30.0, clock=lambda: now[0])

    async def scenario() -> None:
        first, second = keeper("a"), keeper("b")
        jobs = {k.holder: k.guarded("job", _record(ran, k.holder)) for k in (first, second)}
        await first.renew()
        await second.renew()
        for run in jobs.values():
            await run()
        assert ran == ["a"]
        now[0] += 31.0  # a stops renewing (killed): b takes over at its next renewal
        await second.renew()
        assert not first.held("job") and second.held("job")
        for run in jobs.values():
            await run()
        assert ran == ["a", "b"]
        await second.release_all()
        await first.renew()
        assert first.held("job")

    try:
        asyncio.run(scenario())
    finally:
        runner.close()


def _record(ran: list[str], name: str) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        ran.append(name)

    return job


def test_a_sole_forwarder_on_sqlite_holds_every_lease_without_the_store(store: Store) -> None:
    runner = StoreRunner(read_threads=1)
    keeper = LeaseKeeper(store, runner, holder="only", names=["job"], ttl_s=30.0, exclusive=True)
    store.leases.acquire("job", "crashed-predecessor", now=time.time(), ttl_s=30.0)
    try:
        asyncio.run(keeper.renew())
        assert keeper.held("job")  # not waiting out the predecessor's lease
    finally:
        runner.close()
