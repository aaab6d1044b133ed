"""A private RabbitMQ node in a directory of your choice, from Debian's `rabbitmq-server`.

The node listens on loopback only, on free ports below the kernel's ephemeral range (a listener
inside it can collide with outgoing connections), with its own Erlang cookie (HOME is the node
directory), its own data and logs, and a generated administrator password. What a client needs to
reach it is written to ``<dir>/node.json`` (mode 0600)::

    node = RabbitNode(Path("/tmp/b"))
    info = node.start()          # idempotent; waits until the node accepts connections
    info.amqp_url, info.management_url
    node.stop()

With `RabbitNode(dir, tls=True)` the node also gets a TLS listener (`info.amqps_url`) with a
server certificate for localhost / 127.0.0.1 / ::1 / this host's name, signed by a private CA made
for the node (`info.ca_file`, in `<dir>/tls/`; see certs.py). Clients verify the broker against
that CA; the broker does not ask clients for certificates (they log in with a password).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from importlib import resources
from pathlib import Path

from taskfabric.broker_config.certs import CertificateFiles, make_ca, make_server_certificate
from taskfabric.broker_config.management import ManagementClient
from taskfabric.broker_config.topology import EndpointPermissions
from taskfabric.errors import BrokerError, BrokerUnavailable
from taskfabric.processes import free_ports, pid_alive, port_open, wait_for_exit

__all__ = [
    "DEFAULT_VHOST",
    "ClusterMember",
    "NodeInfo",
    "RabbitNode",
    "check_vhost",
    "find_rabbitmq_bin",
    "install_hint",
]

log = logging.getLogger(__name__)

#: the virtual host a node serves taskfabric on: endpoint users get permissions there only, never
#: on the broker's default `/`
DEFAULT_VHOST = "taskfabric"
_VHOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/bin"))
_PORT_RANGE = (20000, 30000)
#: how long the management API may take to create the vhost after the node is up
_VHOST_SETUP_S = 20.0
# seeded from the OS, apart from the global `random` (which tests and user code may reseed)
_port_picker = random.Random()


def check_vhost(name: str) -> str:
    """`name` if it is a virtual host name taskfabric uses (letters, digits, `_.-`, at most 64
    characters; or `/`), else `ValueError` saying so."""
    if name != "/" and not _VHOST_RE.fullmatch(name):
        raise ValueError(f"invalid vhost {name!r}: use letters, digits, '_', '.' and '-' (at most 64), or '/'")
    return name


def install_hint() -> str:
    """The one command that installs the broker on Debian/Ubuntu."""
    return "sudo apt-get install -y rabbitmq-server"


def find_rabbitmq_bin() -> Path:
    """The folder holding `rabbitmq-server` and `rabbitmqctl` run as the current user.

    Debian's /usr/sbin wrappers switch to the `rabbitmq` user, which could not write to our node
    directory; the scripts they wrap run as whoever calls them."""
    for folder in _BIN_DIRS:
        if (folder / "rabbitmq-server").exists():
            return folder
    found = shutil.which("rabbitmq-server")
    if found and Path(found).parent not in (Path("/usr/sbin"), Path("/sbin")):
        return Path(found).parent
    raise BrokerUnavailable(f"RabbitMQ is not installed (no rabbitmq-server found). Install it with: {install_hint()}")


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """How to reach a private node."""

    node_name: str
    directory: str
    amqp_port: int
    management_port: int
    dist_port: int
    username: str
    password: str
    #: the TLS listener's port (None: no TLS listener)
    amqps_port: int | None = None
    #: the PEM CA certificate that signed the TLS listener's certificate
    ca_file: str | None = None
    #: the virtual host the URLs name (node.json files written before it existed get the default)
    vhost: str = DEFAULT_VHOST

    @property
    def _vhost_path(self) -> str:
        return urllib.parse.quote(self.vhost, safe="")

    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.username}:{self.password}@127.0.0.1:{self.amqp_port}/{self._vhost_path}"

    @property
    def amqps_url(self) -> str | None:
        """The TLS listener's URL (verify it against `ca_file`), or None without TLS."""
        if self.amqps_port is None:
            return None
        return f"amqps://{self.username}:{self.password}@127.0.0.1:{self.amqps_port}/{self._vhost_path}"

    @property
    def management_url(self) -> str:
        return f"http://{self.username}:{self.password}@127.0.0.1:{self.management_port}"


#: open files asked for the node (see `RabbitNode._started`): room for ~80,000 quorum queues
_OPEN_FILES = 262_144


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterMember:
    """What makes a node one member of a private cluster (see cluster.py): its fixed name, the
    administrator every member shares, the cluster's one Erlang cookie, and every member's name
    (classic-config peer discovery: a blank node joins the first reachable one)."""

    node_name: str
    username: str
    password: str
    cookie: str
    peers: tuple[str, ...]


class RabbitNode:
    """Start, stop, restart and inspect one private node living in `directory`."""

    def __init__(
        self, directory: Path, *, tls: bool = False, vhost: str | None = None, member: ClusterMember | None = None
    ) -> None:
        """`tls`: give the node a TLS listener too (a node configured without one is reconfigured
        at its next start; one configured with one keeps it). `vhost`: the virtual host its URLs
        name, created at start (default: the one it used before, else `DEFAULT_VHOST`). `member`:
        the node belongs to a cluster (its name, credentials and cookie come from there)."""
        self.directory = Path(directory).absolute()
        self.tls = tls
        self.vhost = None if vhost is None else check_vhost(vhost)
        self.member = member

    @property
    def tls_dir(self) -> Path:
        return self.directory / "tls"

    # --- public -------------------------------------------------------------------------

    @property
    def info_file(self) -> Path:
        return self.directory / "node.json"

    def info(self) -> NodeInfo | None:
        """The node's connection details, if it was ever configured here."""
        try:
            return NodeInfo(**json.loads(self.info_file.read_text()))
        except FileNotFoundError:
            return None

    def prepare(self) -> NodeInfo:
        """The node's connection details, configuring it first if it never was; starts nothing.
        Lets a caller write the broker's URL into other settings while `start()` boots the node
        (in another thread, called after this). `start()` may still move a node whose ports were
        taken meanwhile: what it returns is what holds."""
        return self.info() or self._configure()

    def is_running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def start(self, *, timeout_s: float = 90.0) -> NodeInfo:
        """Start the node (configuring it on first use), wait until it accepts connections, and
        make sure its virtual host exists, with all permissions for the administrator."""
        info = self._started(timeout_s)
        self.ensure_vhost(info)
        return info

    def _started(self, timeout_s: float) -> NodeInfo:
        info = self.launch()
        self._wait_ready(info, timeout_s)
        return info

    def launch(self) -> NodeInfo:
        """Start the node's process (configuring it on first use) without waiting for it to accept
        connections (`wait_ready()` does); nothing if it runs. A cluster launches its stopped
        members together: each waits at boot for the others it last ran with."""
        info = self.info() or self._configure()
        if self.vhost is not None and self.vhost != info.vhost:
            info = dataclasses.replace(info, vhost=self.vhost)
            self._save_info(info)
        if self.tls and info.amqps_port is None:
            if self.is_running():
                raise BrokerError(
                    f"the node in {self.directory} runs without TLS: stop it (`taskfabric broker down`) and start it "
                    "again with --tls"
                )
            info = self._configure(keep_credentials=info)
        if self.is_running():
            return info
        bin_dir = find_rabbitmq_bin()
        if self._ports_busy(info):
            info = self._configure(keep_credentials=info)
        log.info("starting RabbitMQ node %s in %s", info.node_name, self.directory)
        (self.directory / "rabbitmq.pid").unlink(missing_ok=True)  # stale: the node is not running
        (self.directory / "log").mkdir(exist_ok=True)
        startup_log = self.directory / "log" / "startup.log"
        # a shell starts the server in the background and exits at once: the node outlives us.
        # RabbitMQ sizes its file handle cache from the open-files limit, and every quorum queue
        # keeps ~3 handles of it; a connection needs one too, so with this machine's 20,000 the
        # node stopped answering new connections past ~10,000 quorum queues (3,500 endpoints;
        # benchmarks/README.md "Endpoints at scale"). The node gets _OPEN_FILES, or the hard limit.
        launcher = subprocess.run(
            [
                "sh",
                "-c",
                f'ulimit -n {_OPEN_FILES} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; '
                'nohup "$0" >>"$1" 2>&1 </dev/null &',
                str(bin_dir / "rabbitmq-server"),
                str(startup_log),
            ],
            env=self._env(info),
            cwd=self.directory,
            start_new_session=True,
            check=False,
        )
        if launcher.returncode != 0:
            raise BrokerUnavailable(f"could not launch rabbitmq-server (exit {launcher.returncode}); see {startup_log}")
        return info

    def wait_ready(self, *, timeout_s: float = 90.0) -> NodeInfo:
        """Wait until a launched node accepts AMQP and management connections."""
        info = self._require_info()
        self._wait_ready(info, timeout_s)
        return info

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Stop the node gracefully (kill it if it does not stop in time). Fine if not running."""
        info = self.info()
        if info is None or not self.is_running():
            return
        pid = self._pid()
        if pid is None:
            return
        # RabbitMQ stops gracefully on SIGTERM (`init:stop()`: listeners closed, queues and message
        # stores flushed, like `rabbitmqctl stop`) without booting a second Erlang VM for
        # rabbitmqctl. It removes its pid file early in the shutdown: wait for the process itself.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_for_exit(pid, timeout_s):
            log.warning("node %s did not stop; killing it", info.node_name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid, 10)

    def kill(self) -> None:
        """`kill -9` the node (a crash, for fault tests)."""
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)

    def stop_app(self) -> None:
        """Stop the RabbitMQ application, keeping the Erlang VM (a graceful broker restart)."""
        self._ctl(self._require_info(), "stop_app")

    def start_app(self, *, timeout_s: float = 60.0) -> None:
        info = self._require_info()
        self._ctl(info, "start_app", timeout_s=timeout_s)
        self._wait_ready(info, timeout_s)

    def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run `rabbitmqctl` against this node and return its output."""
        return self._ctl(self._require_info(), *args, timeout_s=timeout_s)

    # --- configuration ------------------------------------------------------------------

    def _configure(self, keep_credentials: NodeInfo | None = None) -> NodeInfo:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        tls = self.tls or (keep_credentials is not None and keep_credentials.amqps_port is not None)
        amqp, management, dist, *rest = free_ports(4 if tls else 3, _PORT_RANGE, picker=_port_picker)
        ca = self._make_certificates() if tls else None
        member = self.member
        if keep_credentials:
            node_name, password = keep_credentials.node_name, keep_credentials.password
        elif member:
            node_name, password = member.node_name, member.password
        else:
            node_name, password = f"taskfabric-{secrets.token_hex(4)}@localhost", secrets.token_urlsafe(18)
        info = NodeInfo(
            node_name=node_name,
            directory=str(self.directory),
            amqp_port=amqp,
            management_port=management,
            dist_port=dist,
            username=member.username if member else "taskfabric-admin",
            password=password,
            amqps_port=rest[0] if rest else None,
            ca_file=str(ca.cert_file) if ca else None,
            vhost=keep_credentials.vhost if keep_credentials else (self.vhost or DEFAULT_VHOST),
        )
        self._write_config(info)
        self._save_info(info)
        return info

    def _save_info(self, info: NodeInfo) -> None:
        fd = os.open(self.info_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(info), handle, indent=2)

    def ensure_vhost(self, info: NodeInfo) -> None:
        """Create the node's virtual host (idempotent) and give the administrator every permission
        on it; the forwarder then gives each endpoint user its narrow permissions there only."""
        everything = EndpointPermissions(configure=".*", write=".*", read=".*")
        deadline = time.monotonic() + _VHOST_SETUP_S
        with ManagementClient(info.management_url, vhost=info.vhost) as management:
            while True:
                try:
                    management.create_vhost(description="taskfabric")
                    management.set_permissions(info.username, everything)
                    return
                except BrokerError as exc:  # the management API may lag its listener by a moment
                    if time.monotonic() >= deadline:
                        raise BrokerUnavailable(f"could not create the vhost {info.vhost!r}: {exc}") from None
                    time.sleep(0.2)

    def _make_certificates(self) -> CertificateFiles:
        """The node's CA (made once, kept: clients keep trusting it) and a fresh server certificate."""
        ca = CertificateFiles(cert_file=self.tls_dir / "ca.pem", key_file=self.tls_dir / "ca.key")
        if not (ca.cert_file.exists() and ca.key_file.exists()):
            ca = make_ca(self.tls_dir, name=f"taskfabric broker CA ({self.directory.name})")
        os.chmod(self.tls_dir, 0o700)
        hostnames = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
        make_server_certificate(ca, self.tls_dir, hostnames=list(dict.fromkeys(hostnames)))
        return ca

    def _tls_config(self, info: NodeInfo) -> list[str]:
        if info.amqps_port is None or info.ca_file is None:
            return []
        return [
            f"listeners.ssl.1 = 127.0.0.1:{info.amqps_port}",
            f"ssl_options.cacertfile = {info.ca_file}",
            f"ssl_options.certfile = {self.tls_dir / 'server.pem'}",
            f"ssl_options.keyfile = {self.tls_dir / 'server.key'}",
            "ssl_options.verify = verify_none",  # clients log in with passwords, not certificates
            "ssl_options.fail_if_no_peer_cert = false",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]

    def _write_config(self, info: NodeInfo) -> None:
        package = resources.files("taskfabric.broker_config")
        base = package.joinpath("rabbitmq.conf").read_text()
        generated = "\n".join(
            [
                "",
                "# --- generated by taskfabric for this node ---",
                f"listeners.tcp.1 = 127.0.0.1:{info.amqp_port}",
                f"management.tcp.port = {info.management_port}",
                f"default_user = {info.username}",
                f"default_pass = {info.password}",
                "default_user_tags.administrator = true",
                "default_permissions.configure = .*",
                "default_permissions.read = .*",
                "default_permissions.write = .*",
                *self._tls_config(info),
                *self._cluster_config(),
                "",
            ]
        )
        config = self.directory / "rabbitmq.conf"
        config.write_text(base + generated)
        os.chmod(config, 0o600)
        self._write_cookie()
        (self.directory / "enabled_plugins").write_text(package.joinpath("enabled_plugins").read_text())
        (self.directory / "rabbitmq-env.conf").write_text("")

    def _cluster_config(self) -> list[str]:
        if self.member is None:
            return []
        peers = [f"cluster_formation.classic_config.nodes.{i} = {name}" for i, name in enumerate(self.member.peers, 1)]
        return [
            "cluster_formation.peer_discovery_backend = classic_config",
            *peers,
            # a member cut off from the majority pauses instead of serving stale data
            "cluster_partition_handling = pause_minority",
        ]

    def _write_cookie(self) -> None:
        """The cluster's one Erlang cookie, in the node's HOME (where the server and rabbitmqctl
        look); a lone node makes its own on first start."""
        if self.member is None:
            return
        cookie = self.directory / ".erlang.cookie"
        if cookie.exists() and cookie.read_text() == self.member.cookie:
            return
        if cookie.exists():
            os.chmod(cookie, 0o600)
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.member.cookie)
        os.chmod(cookie, 0o400)  # Erlang refuses a cookie others may read

    def _env(self, info: NodeInfo) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.directory),  # the Erlang cookie lives here, private to this node
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(self.directory / "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=info.node_name,
            RABBITMQ_DIST_PORT=str(info.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.directory / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.directory / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.directory / "log"),
            RABBITMQ_PID_FILE=str(self.directory / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # --- helpers ------------------------------------------------------------------------

    def _require_info(self) -> NodeInfo:
        info = self.info()
        if info is None:
            raise BrokerError(f"no RabbitMQ node is configured in {self.directory}")
        return info

    def _pid(self) -> int | None:
        try:
            return int((self.directory / "rabbitmq.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _ctl(self, info: NodeInfo, *args: str, timeout_s: float = 60.0, check: bool = True) -> str:
        command = [str(find_rabbitmq_bin() / "rabbitmqctl"), "-n", info.node_name, *args]
        try:
            done = subprocess.run(
                command,
                check=False,
                env=self._env(info),
                capture_output=True,
                text=True,
                timeout=timeout_s + 10,
                cwd=self.directory,
            )
        except subprocess.TimeoutExpired:
            raise BrokerUnavailable(f"rabbitmqctl {' '.join(args)} timed out after {timeout_s:g} s") from None
        if check and done.returncode != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return done.stdout

    def _wait_ready(self, info: NodeInfo, timeout_s: float) -> None:
        """Wait until the node's listeners accept connections: the AMQP listener opens once the
        broker has booted, the management listener once its plugin has (both after the pid file).
        Polled from here rather than with `rabbitmqctl wait`, which boots an Erlang VM of its own
        (1-4 s on a loaded machine); fails at once when the node's process dies during its start."""
        deadline = time.monotonic() + timeout_s
        ports = (info.amqp_port, info.management_port, *([info.amqps_port] if info.amqps_port else []))
        while True:
            pid = self._pid()
            if pid is not None and not pid_alive(pid):
                raise BrokerUnavailable(
                    f"RabbitMQ node {info.node_name} exited during its start. See the logs in {self.directory / 'log'}"
                )
            if pid is not None and all(port_open(port) for port in ports):
                return
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"RabbitMQ node {info.node_name} did not start within {timeout_s:g} s "
                    f"(pid file {'written' if pid else 'missing'}, listeners not all open). "
                    f"See the logs in {self.directory / 'log'}"
                )
            time.sleep(0.05)

    @staticmethod
    def _ports_busy(info: NodeInfo) -> bool:
        ports = (info.amqp_port, info.management_port, info.dist_port, *([info.amqps_port] if info.amqps_port else []))
        return any(port_open(port) for port in ports)
