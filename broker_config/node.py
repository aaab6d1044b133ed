"""A private RabbitMQ node in a directory of your choice, from Debian's `rabbitmq-server`.

The node listens on loopback only, on free ports below the kernel's ephemeral range (a listener
inside it can collide with outgoing connections), with its own Erlang cookie (HOME is the node
directory), its own data and logs, and a generated administrator password. What a client needs to
reach it is written to ``<dir>/node.json`` (mode 0600)::

    node = RabbitNode(Path("/tmp/b"))
    info = node.start()          # idempotent; waits until the node accepts connections
    info.amqp_url, info.management_url
    node.stop()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from importlib import resources
from pathlib import Path

from taskfabric.errors import BrokerError, BrokerUnavailable
from taskfabric.processes import free_ports, port_open

__all__ = ["NodeInfo", "RabbitNode", "find_rabbitmq_bin", "install_hint"]

log = logging.getLogger(__name__)

_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/bin"))
_PORT_RANGE = (20000, 30000)
# seeded from the OS, apart from the global `random` (which tests and user code may reseed)
_port_picker = random.Random()


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

    @property
    def amqp_url(self) -> str:
        return f"amqp://{self.username}:{self.password}@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://{self.username}:{self.password}@127.0.0.1:{self.management_port}"


class RabbitNode:
    """Start, stop, restart and inspect one private node living in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()

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
        """Start the node (configuring it on first use) and wait until it accepts connections."""
        info = self.info() or self._configure()
        if self.is_running():
            self._wait_ready(info, timeout_s)
            return info
        bin_dir = find_rabbitmq_bin()
        if self._ports_busy(info):
            info = self._configure(keep_credentials=info)
        log.info("starting RabbitMQ node %s in %s", info.node_name, self.directory)
        (self.directory / "log").mkdir(exist_ok=True)
        startup_log = self.directory / "log" / "startup.log"
        # a shell starts the server in the background and exits at once: the node outlives us
        launcher = subprocess.run(
            ["sh", "-c", 'nohup "$0" >>"$1" 2>&1 </dev/null &', str(bin_dir / "rabbitmq-server"), str(startup_log)],
            env=self._env(info),
            cwd=self.directory,
            start_new_session=True,
            check=False,
        )
        if launcher.returncode != 0:
            raise BrokerUnavailable(f"could not launch rabbitmq-server (exit {launcher.returncode}); see {startup_log}")
        self._wait_ready(info, timeout_s)
        return info

    def stop(self, *, timeout_s: float = 60.0) -> None:
        """Stop the node gracefully (kill it if it does not stop in time). Fine if not running."""
        info = self.info()
        if info is None or not self.is_running():
            return
        pid = self._pid()
        self._ctl(info, "stop", str(self.directory / "rabbitmq.pid"), timeout_s=timeout_s, check=False)
        deadline = time.monotonic() + timeout_s
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid is not None and self.is_running():
            log.warning("node %s did not stop; killing it", info.node_name)
            self.kill()

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
        amqp, management, dist = free_ports(3, _PORT_RANGE, picker=_port_picker)
        info = NodeInfo(
            node_name=keep_credentials.node_name
            if keep_credentials
            else f"taskfabric-{secrets.token_hex(4)}@localhost",
            directory=str(self.directory),
            amqp_port=amqp,
            management_port=management,
            dist_port=dist,
            username="taskfabric-admin",
            password=keep_credentials.password if keep_credentials else secrets.token_urlsafe(18),
        )
        self._write_config(info)
        fd = os.open(self.info_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(info), handle, indent=2)
        return info

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
                "",
            ]
        )
        config = self.directory / "rabbitmq.conf"
        config.write_text(base + generated)
        os.chmod(config, 0o600)
        (self.directory / "enabled_plugins").write_text(package.joinpath("enabled_plugins").read_text())
        (self.directory / "rabbitmq-env.conf").write_text("")

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
        """Wait for the pid file, the Erlang distribution and the broker's apps (rabbitmqctl wait)."""
        deadline = time.monotonic() + timeout_s
        pid_file = str(self.directory / "rabbitmq.pid")
        try:
            self._ctl(info, "wait", pid_file, "--timeout", str(int(timeout_s)), timeout_s=timeout_s)
        except BrokerError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ node {info.node_name} did not start within {timeout_s:g} s: {exc}. "
                f"See the logs in {self.directory / 'log'}"
            ) from None
        while time.monotonic() < deadline:  # the AMQP listener comes up last
            if port_open(info.amqp_port) and port_open(info.management_port):
                return
            time.sleep(0.1)
        raise BrokerUnavailable(f"RabbitMQ node {info.node_name} started but its listeners did not open")

    @staticmethod
    def _ports_busy(info: NodeInfo) -> bool:
        return any(port_open(port) for port in (info.amqp_port, info.management_port, info.dist_port))
