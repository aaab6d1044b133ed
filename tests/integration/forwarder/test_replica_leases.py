"""Leases of once-only jobs shared by forwarder replicas, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from taskfabric.forwarder.leases import LeaseKeeper
from taskfabric.forwarder.store import Store, StoreRunner


def _job(name: str) -> str:
    """A lease name of this test alone: the session's PostgreSQL store is shared with forwarders
    that hold the real jobs' leases (`expire-results`, `rebuild-queues`) in real time."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_replica_lease_is_held_by_one_holder_until_it_expires(store: Store) -> None:
    leases = store.leases
    job = _job("expire-results")
    assert leases.acquire(job, "replica-a", now=1000.0, ttl_s=30.0)
    assert not leases.acquire(job, "replica-b", now=1010.0, ttl_s=30.0)
    assert leases.acquire(job, "replica-a", now=1020.0, ttl_s=30.0)  # renewed to 1050
    assert not leases.acquire(job, "replica-b", now=1049.0, ttl_s=30.0)
    assert leases.holders(now=1049.0).get(job) == "replica-a"
    assert leases.acquire(job, "replica-b", now=1051.0, ttl_s=30.0)  # a's lease ran out
    assert not leases.acquire(job, "replica-a", now=1052.0, ttl_s=30.0)
    assert leases.holders(now=1052.0).get(job) == "replica-b"


def test_replica_lease_released_is_free_at_once_and_leases_are_per_job(store: Store) -> None:
    leases = store.leases
    rebuild, expire = _job("rebuild-queues"), _job("expire-results")
    assert leases.acquire(rebuild, "replica-a", now=1000.0, ttl_s=30.0)
    assert leases.acquire(expire, "replica-b", now=1000.0, ttl_s=30.0)
    leases.release(rebuild, "replica-b")  # not b's: nothing happens
    assert not leases.acquire(rebuild, "replica-b", now=1001.0, ttl_s=30.0)
    leases.release(rebuild, "replica-a")
    assert leases.acquire(rebuild, "replica-b", now=1002.0, ttl_s=30.0)
    holders = leases.holders(now=1002.0)
    assert (holders.get(rebuild), holders.get(expire)) == ("replica-b", "replica-b")


def test_replica_lease_keepers_run_a_job_on_one_replica(store: Store) -> None:
    job_name = _job("job")
    now = [1000.0]
    runner = StoreRunner(read_threads=1)
    ran: list[str] = []

    def keeper(name: str) -> LeaseKeeper:
        return LeaseKeeper(store, runner, holder=name, names=[job_name], ttl_s=30.0, clock=lambda: now[0])

    async def scenario() -> None:
        first, second = keeper("a"), keeper("b")
        jobs = {k.holder: k.guarded(job_name, _record(ran, k.holder)) for k in (first, second)}
        await first.renew()
        await second.renew()
        for run in jobs.values():
            await run()
        assert ran == ["a"]
        now[0] += 31.0  # a stops renewing (killed): b takes over at its next renewal
        await second.renew()
        assert not first.held(job_name) and second.held(job_name)
        for run in jobs.values():
            await run()
        assert ran == ["a", "b"]
        await second.release_all()
        await first.renew()
        assert first.held(job_name)

    try:
        asyncio.run(scenario())
    finally:
        runner.close()


def _record(ran: list[str], name: str) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        ran.append(name)

    return job


def test_a_sole_forwarder_on_sqlite_holds_every_lease_without_the_store(store: Store) -> None:
    job_name = _job("job")
    runner = StoreRunner(read_threads=1)
    keeper = LeaseKeeper(store, runner, holder="only", names=[job_name], ttl_s=30.0, exclusive=True)
    store.leases.acquire(job_name, "crashed-predecessor", now=time.time(), ttl_s=30.0)
    try:
        asyncio.run(keeper.renew())
        assert keeper.held(job_name)  # not waiting out the predecessor's lease
    finally:
        runner.close()
