"""A private RabbitMQ cluster of N nodes on this machine (`taskfabric broker up --nodes 3`).

Each member is a `RabbitNode` in `<dir>/node-<i>` with its own name (`<prefix>-<i>@localhost`),
loopback ports and data; all share one Erlang cookie and one administrator, and find each other by
classic-config peer discovery (every member lists every member). `<dir>/cluster.json` (mode 0600)
records the members::

    cluster = RabbitCluster(Path("/tmp/c"), size=3)
    info = cluster.start()      # idempotent; waits until every member runs and has joined
    info.amqp_urls, info.management_urls
    cluster.kill(1); cluster.start_member(1)   # fault tests
    cluster.status()            # members (running or not) and the leader of each quorum queue
    cluster.stop()

Forming: the first member boots alone, then the others boot together and join it (a blank node
joins the first reachable peer). After that, members remember the cluster in their own data, so a
stopped cluster is started by launching every member at once (each waits at boot for the peers it
last ran with).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import string
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from taskfabric.broker_config.management import ManagementClient
from taskfabric.broker_config.node import ClusterMember, NodeInfo, RabbitNode, check_vhost
from taskfabric.errors import BrokerError, BrokerUnavailable

__all__ = ["CLUSTER_FILE", "ClusterInfo", "ClusterStatus", "MemberStatus", "QueueLeader", "RabbitCluster"]

#: the file in a cluster's directory that says it is one (and lists its members)
CLUSTER_FILE = "cluster.json"
_MAX_NODES = 9
_COOKIE_ALPHABET = string.ascii_uppercase + string.digits


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterInfo:
    """How to reach every member of a running cluster."""

    nodes: tuple[NodeInfo, ...]

    @property
    def amqp_urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    @property
    def management_urls(self) -> list[str]:
        return [node.management_url for node in self.nodes]

    @property
    def vhost(self) -> str:
        return self.nodes[0].vhost


@dataclasses.dataclass(frozen=True, slots=True)
class MemberStatus:
    node_name: str
    running: bool
    amqp_url: str


@dataclasses.dataclass(frozen=True, slots=True)
class QueueLeader:
    """A quorum queue's leader and its members (online or not), as the management API reports."""

    queue: str
    leader: str | None
    members: tuple[str, ...]
    online: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStatus:
    members: tuple[MemberStatus, ...]
    #: None when no member's management API answered
    queues: tuple[QueueLeader, ...] | None

    @property
    def running(self) -> int:
        return sum(member.running for member in self.members)


class RabbitCluster:
    """Start, stop and inspect a private cluster of `size` nodes in `directory`."""

    def __init__(self, directory: Path, *, size: int | None = None, vhost: str | None = None) -> None:
        """`size`: the number of members (needed the first time; later it must match, or be None).
        `vhost`: as for `RabbitNode`."""
        self.directory = Path(directory).absolute()
        self.vhost = None if vhost is None else check_vhost(vhost)
        spec = self._load_spec()
        if spec is None:
            if size is None:
                raise BrokerError(f"no RabbitMQ cluster is configured in {self.directory}")
            if not 1 <= size <= _MAX_NODES:
                raise ValueError(f"a cluster has 1 to {_MAX_NODES} nodes, not {size}")
            spec = self._new_spec(size)
        elif size is not None and size != len(spec["nodes"]):
            raise BrokerError(
                f"the cluster in {self.directory} has {len(spec['nodes'])} nodes, not {size}: "
                "stop it and use another directory"
            )
        self._spec = spec
        peers = tuple(spec["nodes"])
        self.members = [
            RabbitNode(
                self.directory / f"node-{i}",
                vhost=self.vhost,
                member=ClusterMember(
                    node_name=name,
                    username=spec["username"],
                    password=spec["password"],
                    cookie=spec["cookie"],
                    peers=peers,
                ),
            )
            for i, name in enumerate(peers, 1)
        ]

    @staticmethod
    def is_cluster(directory: Path) -> bool:
        """Whether `directory` holds a cluster (rather than a single node, or nothing)."""
        return (Path(directory) / CLUSTER_FILE).exists()

    @property
    def member_names(self) -> list[str]:
        """Every member's node name, in member order."""
        return [str(name) for name in self._spec["nodes"]]

    @property
    def size(self) -> int:
        return len(self.members)

    # --- life ---------------------------------------------------------------------------

    def start(self, *, timeout_s: float = 120.0) -> ClusterInfo:
        """Start every member that is not running, wait until all accept connections and have
        joined one cluster, and make sure the virtual host exists."""
        deadline = time.monotonic() + timeout_s
        first = self.members[0]
        if first.info() is None:  # never formed: the first member founds the cluster alone
            first.launch()
            first.wait_ready(timeout_s=_left(deadline))
        for member in self.members:
            member.launch()
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            waits = [pool.submit(member.wait_ready, timeout_s=_left(deadline)) for member in self.members]
            nodes = tuple(wait.result() for wait in waits)
        info = ClusterInfo(nodes)
        self._wait_joined(info, deadline)
        first.ensure_vhost(nodes[0])
        return info

    def start_member(self, index: int, *, timeout_s: float = 90.0) -> NodeInfo:
        """Start member `index` (0-based) again, e.g. after `kill(index)`; waits until it runs."""
        member = self.members[index]
        member.launch()
        return member.wait_ready(timeout_s=timeout_s)

    def kill(self, index: int) -> None:
        """`kill -9` member `index` (0-based): a crash, for fault tests."""
        self.members[index].kill()

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Stop every member gracefully, all at once (their data stays)."""
        with ThreadPoolExecutor(max_workers=self.size) as pool:
            for stop in [pool.submit(member.stop, timeout_s=timeout_s) for member in self.members]:
                stop.result()

    def info(self) -> ClusterInfo | None:
        """Every member's connection details, once the cluster was started here."""
        nodes = [member.info() for member in self.members]
        if any(node is None for node in nodes):
            return None
        return ClusterInfo(tuple(node for node in nodes if node is not None))

    def status(self) -> ClusterStatus:
        """Every member (running or not) and the leader of each quorum queue of the vhost."""
        info = self.info()
        members = tuple(
            MemberStatus(
                node_name=str(self._spec["nodes"][i]),
                running=member.is_running(),
                amqp_url=node.amqp_url if info and (node := info.nodes[i]) else "",
            )
            for i, member in enumerate(self.members)
        )
        return ClusterStatus(members=members, queues=self._queue_leaders(info, members))

    def leader_of(self, queue: str) -> int | None:
        """The index of the member leading quorum queue `queue` (None: no leader now)."""
        info = self.info()
        if info is None:
            return None
        with ManagementClient(info.management_urls, vhost=info.vhost) as management:
            leader = management.queue_states().get(queue, {}).get("leader")
        names = self.member_names
        return names.index(leader) if leader in names else None

    # --- helpers ------------------------------------------------------------------------

    def _queue_leaders(
        self, info: ClusterInfo | None, members: tuple[MemberStatus, ...]
    ) -> tuple[QueueLeader, ...] | None:
        if info is None or not any(member.running for member in members):
            return None
        urls = [node.management_url for node, member in zip(info.nodes, members, strict=True) if member.running]
        try:
            with ManagementClient(urls, vhost=info.vhost, timeout_s=5.0) as management:
                rows = management.queue_states()
        except BrokerError:
            return None
        return tuple(
            QueueLeader(
                queue=name,
                leader=row.get("leader"),
                members=tuple(row.get("members") or ()),
                online=tuple(row.get("online") or ()),
            )
            for name, row in sorted(rows.items())
            if row.get("type") == "quorum"
        )

    def _wait_joined(self, info: ClusterInfo, deadline: float) -> None:
        """Wait until the first member's management API sees every member running (the members
        booted, but a joining node may still be syncing its schema)."""
        expected = set(self._spec["nodes"])
        running: set[str] = set()
        with ManagementClient(info.management_urls, vhost=info.vhost, timeout_s=5.0) as management:
            while time.monotonic() < deadline:
                try:
                    running = {str(node["name"]) for node in management.nodes() if node.get("running")}
                except BrokerError:
                    running = set()
                if running >= expected:
                    return
                time.sleep(0.2)
        raise BrokerUnavailable(
            f"the cluster in {self.directory} did not form in time: running members {sorted(running)}, "
            f"expected {sorted(expected)}. See the logs in {self.directory}/node-*/log"
        )

    def _load_spec(self) -> dict[str, Any] | None:
        try:
            spec: dict[str, Any] = json.loads((self.directory / CLUSTER_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise BrokerError(f"{self.directory / CLUSTER_FILE} is not valid JSON: {exc}") from None
        return spec

    def _new_spec(self, size: int) -> dict[str, Any]:
        # epmd and node names are shared by everyone on this machine: a random prefix keeps two
        # clusters (another user's, another test's) apart
        prefix = f"tf-{secrets.token_hex(3)}"
        spec: dict[str, Any] = {
            "nodes": [f"{prefix}-{i}@localhost" for i in range(1, size + 1)],
            "username": "taskfabric-admin",
            "password": secrets.token_urlsafe(18),
            "cookie": "".join(secrets.choice(_COOKIE_ALPHABET) for _ in range(32)),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        fd = os.open(self.directory / CLUSTER_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(spec, handle, indent=2)
        return spec


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())
