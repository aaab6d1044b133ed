"""Two forwarder replicas on one PostgreSQL (issue 18 part B): results fan out between replicas,
once-only jobs run under a lease, clients fail over between URLs and through HAProxy.

One fabric for the module: two forwarder processes, one endpoint agent (registered through the
first), the session's broker. The results streams' store poll is set to 15 s, far above the 2 s
a result may take in the fan-out test: a result reaching a stream on the replica that did not
ingest it within 2 s went through the fan-out, not the poll. (The poll still delivers, after up
to 15 s, results a replica acknowledged just before it was killed -9 and never announced: the
HAProxy test may wait for that, rarely, when the client's stream was on the survivor.)
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskfabric.client import Client, Executor
from taskfabric.client.cli import login_to
from taskfabric.endpoint_agent.local import configure_endpoint, register_endpoint, start_endpoint, stop_endpoint
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.testing import ForwarderProcess, postgres_for_tests
from taskfabric.forwarder.testing.haproxy import HAProxy
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

from .conftest import ENDPOINT_SETTINGS

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POLL_S = 15.0  # the safety-net store poll: far above the 2 s a fan-out result may take here
LEASE_TTL_S = 4.0  # short for the takeover test; a stall longer than 2/3 of it would move a lease
ONCE_ONLY_JOBS = {"expire-results", "rebuild-queues"}
FORWARDER_SETTINGS = {
    "status_period_s": 0.5,
    "endpoint_offline_after_s": 3.0,
    "status_flush_s": 0.2,
    "confirm_timeout_s": 10.0,
    "stream_poll_s": POLL_S,
    "lease_ttl_s": LEASE_TTL_S,
    "endpoint_sync_period_s": 0.5,  # the second replica consumes an endpoint registered on the first soon
}


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    import time

    time.sleep(0.01)
    return x * x


@dataclasses.dataclass
class Replicas:
    first: ForwarderProcess
    second: ForwarderProcess
    store: Store
    token: str
    username: str
    endpoint_id: str
    killed: ForwarderProcess | None = None

    @property
    def both(self) -> tuple[ForwarderProcess, ForwarderProcess]:
        return self.first, self.second

    def client(self, url: str | list[str]) -> Client:
        return Client(url=url, token=self.token)

    def lease_holders(self) -> dict[str, str]:
        return self.store.leases.holders(now=time.time())

    def process_holding(self, job: str) -> ForwarderProcess:
        holder = self.lease_holders()[job]
        pid = int(holder.split(":")[1])
        (process,) = [replica for replica in self.both if replica.pid == pid]
        return process

    def kill_lease_holder(self) -> ForwarderProcess:
        """Kill -9 the replica holding `expire-results` (once per module); returns it."""
        if self.killed is None:
            self.killed = self.process_holding("expire-results")
            self.killed.kill()
        return self.killed


def _start_endpoint(url: str, token: str) -> tuple[str, str]:
    """An endpoint agent registered through `url`, online with workers: (name, id)."""
    name = unique_name("ep")
    configure_endpoint(name, settings=ENDPOINT_SETTINGS)
    with Client(url=url, token=token) as client:
        endpoint_id = str(register_endpoint(name, client).endpoint_id)
        start_endpoint(name, detach=True)
        wait_until(
            lambda: (s := client.get_endpoint_status(endpoint_id))["status"] == "online" and s.get("workers"),
            timeout_s=60,
            interval_s=0.1,
            what=f"endpoint {endpoint_id} online with workers",
        )
    return name, endpoint_id


@pytest.fixture(scope="module")
def replicas(broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    assert broker.management_url, "end-to-end tests need the broker's management API"
    folder = tmp_path_factory.mktemp("replicas")
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))  # endpoint folders: private to this module
    with postgres_for_tests(folder / "postgres") as database_url:
        values = {
            **FORWARDER_SETTINGS,
            "database_url": database_url,
            "amqp_url": broker.amqp_url,
            "management_url": broker.management_url,
            "topology_prefix": unique_name("e2e-replicas"),
        }
        settings = ForwarderSettings.from_mapping(values)
        username = unique_name("researcher")
        endpoint_name = None
        with (
            ForwarderProcess(folder / "first", values) as first,
            ForwarderProcess(folder / "second", values) as second,
            Store.open(database_url) as store,
        ):
            try:
                create_user(settings, username)
                token = create_token(settings, username)
                endpoint_name, endpoint_id = _start_endpoint(first.url, token)
                yield Replicas(first, second, store, token, username, endpoint_id)
            finally:
                if endpoint_name is not None:
                    stop_endpoint(endpoint_name, timeout_s=30)
    patch.undo()


def _metric(forwarder: ForwarderProcess, name: str, label: str, value: str) -> float:
    """One counter of the replica's /metrics (0 when absent)."""
    text = httpx.get(f"{forwarder.url}/metrics", timeout=10).text
    found = re.search(rf'^{name}\{{{label}="{re.escape(value)}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _results_ingested(forwarder: ForwarderProcess, endpoint_id: str) -> float:
    """The replica's count of results it consumed and stored for the endpoint."""
    return _metric(forwarder, "taskfabric_results_total", "endpoint", endpoint_id)


def test_a_result_ingested_by_one_replica_reaches_a_stream_on_the_other_fast(replicas: Replicas) -> None:
    first, second = replicas.both
    with replicas.client(second.url) as client, Executor(replicas.endpoint_id, client=client) as executor:
        executor.submit(square, 0).result(timeout=60)  # warm: the worker imports, the function registers
        latencies = []
        for x in range(1, 31):  # one at a time: each result is its own message, shared round robin
            started = time.monotonic()
            assert executor.submit(square, x).result(timeout=POLL_S / 2) == x * x
            latencies.append(time.monotonic() - started)
            if x >= 10 and _results_ingested(first, replicas.endpoint_id) >= 3:
                break
    via_first = _results_ingested(first, replicas.endpoint_id)
    assert via_first >= 1, "the first replica ingested none: the fan-out was not exercised"
    assert _metric(first, "taskfabric_replica_notices_total", "direction", "sent") >= 1
    assert _metric(second, "taskfabric_replica_notices_total", "direction", "received") >= 1
    assert max(latencies) < 2.0, f"a result took {max(latencies):.2f} s (store poll: {POLL_S:g} s): {latencies}"


def test_once_only_jobs_are_leased_to_exactly_one_replica(replicas: Replicas) -> None:
    holders = wait_until(
        lambda: (found := replicas.lease_holders()) and set(found) == ONCE_ONLY_JOBS and found,
        timeout_s=10,
        what="both once-only jobs leased",
    )
    pids = {replica.pid for replica in replicas.both}
    assert {int(holder.split(":")[1]) for holder in holders.values()} <= pids
    took = {
        job: sum(f"took the lease {job!r}" in replica.log_file.read_text() for replica in replicas.both)
        for job in ONCE_ONLY_JOBS
    }
    assert took == dict.fromkeys(ONCE_ONLY_JOBS, 1)  # one replica took each, the other never did


def test_client_fails_over_to_the_next_replica_url(replicas: Replicas) -> None:
    with socket.socket() as unused:  # a port nothing listens on: connections are refused
        unused.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    urls = [dead_url, replicas.second.url]
    with replicas.client(urls) as client, Executor(replicas.endpoint_id, client=client) as executor:
        assert list(executor.map(square, range(50), timeout=60)) == [x * x for x in range(50)]
        assert client.whoami()["username"] == replicas.username
    # `taskfabric login --url a,b` saves both; a Client without arguments uses them
    assert login_to(",".join(urls), replicas.token)["username"] == replicas.username
    with Client() as saved:
        assert saved.config.urls == tuple(urls)
        assert saved.whoami()["username"] == replicas.username


def test_a_replica_killed_behind_haproxy_the_client_finishes_and_its_leases_move(
    replicas: Replicas, tmp_path: Path
) -> None:
    with (
        HAProxy(tmp_path / "haproxy", [replica.url for replica in replicas.both]) as proxy,
        replicas.client(proxy.url) as client,
        Executor(replicas.endpoint_id, client=client) as executor,
    ):
        futures = [executor.submit(slow_square, x) for x in range(300)]
        wait_until(lambda: sum(f.done() for f in futures) >= 50, timeout_s=60, what="50 results")
        killed = replicas.kill_lease_holder()
        assert not all(f.done() for f in futures)  # killed during the map
        futures += [executor.submit(slow_square, x) for x in range(300, 600)]
        assert [future.result(timeout=60) for future in futures] == [x * x for x in range(600)]
    (survivor,) = [replica for replica in replicas.both if replica is not killed]
    wait_until(
        lambda: (
            set(replicas.lease_holders()) == ONCE_ONLY_JOBS
            and all(f":{survivor.pid}:" in holder for holder in replicas.lease_holders().values())
        ),
        timeout_s=3 * LEASE_TTL_S,
        what="the survivor to take over the leases",
    )


def test_a_client_whose_replica_is_killed_fails_over_to_its_next_url(replicas: Replicas) -> None:
    """The first URL's replica holds the client's HTTP calls and its results stream; killed -9
    during a map, both move to the next URL and the map finishes."""
    killed = replicas.kill_lease_holder()
    (survivor,) = [replica for replica in replicas.both if replica is not killed]
    killed.start()  # again, on a new port: the client's first URL
    with (
        replicas.client([killed.url, survivor.url]) as client,
        Executor(replicas.endpoint_id, client=client) as executor,
    ):
        futures = [executor.submit(slow_square, x) for x in range(300)]
        wait_until(lambda: sum(f.done() for f in futures) >= 50, timeout_s=60, what="50 results")
        killed.kill()
        assert not all(f.done() for f in futures)  # killed during the map
        futures += [executor.submit(slow_square, x) for x in range(300, 400)]
        assert [future.result(timeout=60) for future in futures] == [x * x for x in range(400)]
        assert client.whoami()["username"] == replicas.username
