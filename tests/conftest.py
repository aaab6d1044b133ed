"""Shared fixtures: a real broker for the session, transports, and a unique topology per test;
a real single-node Slurm and bubblewrap for the scaling tests.

The broker is the one named by TASKFABRIC_TEST_AMQP_URL (+ TASKFABRIC_TEST_MANAGEMENT_URL), or a
private RabbitMQ node started from broker_config/ for this session. It is never skipped: without a
broker the tests that need one fail with the reason and the fix. The Slurm cluster is installed
(as root) and started on first use; tests that need it skip, with the reason, only when Slurm
cannot be installed or started here.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskfabric.broker_config import RabbitCluster, RabbitNode, Topology
from taskfabric.logs import setup_logging
from taskfabric.processes import port_open
from taskfabric.testing import BrokerUnderTest, broker_for_tests, unique_name
from taskfabric.testing.apt import MissingSystemPackages, ensure_packages
from taskfabric.testing.cluster import cluster_for_tests
from taskfabric.testing.slurm import SlurmCluster, SlurmUnavailable
from taskfabric.transport import MemoryBroker, MemoryTransport, RabbitTransport, Transport


def pytest_configure(config: pytest.Config) -> None:
    setup_logging(logging.INFO, stream=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    """The session's real RabbitMQ broker."""
    with broker_for_tests(tmp_path_factory.mktemp("broker")) as found:
        yield found


@pytest.fixture(scope="session")
def _session_private_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    node = RabbitNode(tmp_path_factory.mktemp("private-broker") / "node")
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def private_node(_session_private_node: RabbitNode) -> Iterator[RabbitNode]:
    """A private RabbitMQ node for the modules whose tests stop, kill or restart their broker
    (never the session broker: it may be an external one shared with others).

    One node for the whole session, handed to one module at a time: starting a node costs 8-13 s
    on a loaded 2-core machine, and these modules need a node they may break, not a new one. Each
    module gets it running; after the module it is brought back up (a test may have killed it or
    stopped its application) for the next one. Modules keep their names unique (topology
    prefixes, endpoint ids), as on the session broker."""
    _bring_up(_session_private_node)
    yield _session_private_node
    _bring_up(_session_private_node)


def _bring_up(node: RabbitNode) -> None:
    info = node.info()
    if info is not None and node.is_running() and not port_open(info.amqp_port):
        node.start_app()  # the application was stopped (`stop_app`), the Erlang VM kept
    node.start()


@pytest.fixture(scope="module")
def broker_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """A private 3-node RabbitMQ cluster for one module (its tests may kill and restart members:
    `kill(i)`, `start_member(i)`, `leader_of(queue)`); stopped after the module. Costs 10-25 s to
    start on a loaded 2-core machine: use it in one module per subject."""
    with cluster_for_tests(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def rabbit_factory(broker: BrokerUnderTest) -> Iterator[Callable[..., RabbitTransport]]:
    """Make started RabbitTransports to the session broker; all closed after the test."""
    made: list[RabbitTransport] = []

    def make(url: str | None = None, **kwargs: object) -> RabbitTransport:
        transport = RabbitTransport(url or broker.amqp_url, connection_name="taskfabric-tests", **kwargs)  # type: ignore[arg-type]
        transport.start()
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


@pytest.fixture
def rabbit(rabbit_factory: Callable[..., RabbitTransport]) -> RabbitTransport:
    return rabbit_factory()


@pytest.fixture
def topology(rabbit: RabbitTransport) -> Iterator[Topology]:
    """A topology with a unique prefix, declared on the session broker, deleted afterwards."""
    topo = Topology(prefix=unique_name("t"), delivery_limit=2)
    topo.declare_shared(rabbit)
    yield topo
    topo.delete_shared(rabbit)


@pytest.fixture(params=["memory", "rabbitmq"])
def any_transport(request: pytest.FixtureRequest) -> Iterator[tuple[Transport, Callable[[], Transport]]]:
    """(transport, make_another) on the in-memory broker and on RabbitMQ: contract tests run on both."""
    if request.param == "memory":
        memory = MemoryBroker()
        made: list[Transport] = []

        def make() -> Transport:
            transport = MemoryTransport(memory)
            transport.start()
            made.append(transport)
            return transport

        first = make()
        yield first, make
        for transport in made:
            transport.close()
    else:
        factory = request.getfixturevalue("rabbit_factory")
        yield factory(), factory


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TASKFABRIC_HOME for commands that keep per-user files."""
    home = tmp_path / "tfhome"
    monkeypatch.setenv("TASKFABRIC_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A private single-node Slurm for the session (installed with apt-get if missing, as root).

    Skips, with the reason, only when Slurm cannot be installed or started on this machine. On
    teardown it checks that no process of the cluster (daemon, slurmstepd, job) is left."""
    cluster = SlurmCluster()
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm is unavailable here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.processes() == [], "Slurm processes outlived the cluster"
    assert cluster.stray_processes == [], f"processes had to be killed after stopping Slurm: {cluster.stray_processes}"


@pytest.fixture(scope="session")
def bwrap() -> str:
    """The `bwrap` executable (Debian's bubblewrap, installed with apt-get if missing, as root)."""
    try:
        ensure_packages(["bubblewrap"])
    except MissingSystemPackages as exc:
        pytest.fail(f"bubblewrap is needed for the container tests: {exc}")
    found = shutil.which("bwrap")
    if found is None:
        pytest.fail("bubblewrap is installed but `bwrap` is not on PATH")
    return found


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL database for the session (never skipped: fails naming what to fix)."""
    from taskfabric.forwarder.testing import postgres_for_tests

    with postgres_for_tests(tmp_path_factory.mktemp("postgres")) as url:
        yield url


@pytest.fixture(scope="session")
def bwrap_sandbox(bwrap: str) -> str:
    """The bubblewrap container template, keeping this Python installation (and, for an editable
    install, the source checkout) visible even when they live under the sandbox's private /tmp."""
    import sys

    import taskfabric
    from taskfabric.endpoint_agent.containers import bwrap_template

    return bwrap_template([sys.prefix, str(Path(taskfabric.__file__).resolve().parents[1])])
