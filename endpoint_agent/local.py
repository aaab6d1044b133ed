"""Endpoints on this machine: their folders under `$TASKFABRIC_HOME/endpoints/NAME/`, and the plain
functions behind `taskfabric endpoint configure|start|stop|restart|status|list|delete`.

Each folder holds `config.yaml` (the endpoint's settings), `connection.json` (its id and broker
credentials, from registering with the forwarder), `ledger.sqlite` (tasks in hand), `agent.log`,
`agent.pid` while running, `supervisor.pid` and `supervisor.json` (the process that restarts a
crashed agent, and its restart count; see supervisor.py), and `blocks/` (provider scripts and
manager/worker logs).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from taskfabric import __version__
from taskfabric.daemon import spawn_detached
from taskfabric.endpoint_agent.agent import AgentPaths
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.supervisor import read_state as read_supervisor_state
from taskfabric.errors import ConfigError, TaskfabricError
from taskfabric.paths import taskfabric_home

__all__ = [
    "LocalEndpoint",
    "configure_endpoint",
    "delete_endpoint",
    "endpoints_root",
    "list_local_endpoints",
    "register_endpoint",
    "start_endpoint",
    "stop_endpoint",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def endpoints_root() -> Path:
    return taskfabric_home() / "endpoints"


@dataclasses.dataclass(frozen=True)
class LocalEndpoint:
    """One endpoint folder on this machine."""

    name: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"invalid endpoint name {self.name!r}: use letters, digits, '.', '_' and '-'")

    @property
    def paths(self) -> AgentPaths:
        return AgentPaths(endpoints_root() / self.name)

    @property
    def exists(self) -> bool:
        return self.paths.config.exists()

    def require(self) -> None:
        if not self.exists:
            raise ConfigError(
                f"no endpoint named {self.name!r} here: create it with `taskfabric endpoint configure {self.name}`"
            )

    def pid(self) -> int | None:
        """The agent's pid if it is running."""
        return _running_pid(self.paths.pid)

    def supervisor_pid(self) -> int | None:
        """The supervisor's pid if it is running."""
        return _running_pid(self.paths.supervisor_pid)

    def endpoint_id(self) -> str | None:
        try:
            return str(EndpointConnection.load(self.paths.connection).endpoint_id)
        except ConfigError:
            return None

    def config(self) -> EndpointConfig:
        return EndpointConfig.from_file(self.paths.config)

    def describe(self) -> dict[str, Any]:
        pid = self.pid()
        endpoint_id = self.endpoint_id()
        supervised = read_supervisor_state(self.paths.root)
        if pid:
            state = "running"
        elif self.supervisor_pid():
            state = "restarting"
        elif supervised.get("gave_up"):
            state = "crashed"
        else:
            state = "stopped" if endpoint_id else "not registered"
        return {
            "name": self.name,
            "endpoint_id": endpoint_id,
            "state": state,
            "pid": pid,
            "directory": str(self.paths.root),
            "restarts": supervised.get("restarts", 0),
            "last_exit_reason": supervised.get("last_exit_reason"),
        }


def _running_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def config_template(name: str, settings: dict[str, Any]) -> str:
    """A config.yaml with the given settings and every other key commented out with its default."""
    lines = [
        f"# taskfabric endpoint {name!r}: every key, its default and meaning is listed by",
        "# `taskfabric endpoint config-keys` and in docs/endpoint-owner.md. Apply changes with",
        f"# `taskfabric endpoint restart {name}`.",
        yaml.safe_dump(settings, sort_keys=False).rstrip(),
        "",
        "# Other keys (defaults shown):",
    ]
    for field in dataclasses.fields(EndpointConfig):
        if field.name in settings:
            continue
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        rendered = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        lines.append(f"# {field.name}: {rendered}")
    return "\n".join(lines) + "\n"


def configure_endpoint(name: str, *, settings: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Create the endpoint's folder and config.yaml (validated before it is written)."""
    endpoint = LocalEndpoint(name)
    if endpoint.exists and not overwrite:
        raise ConfigError(
            f"endpoint {name!r} already exists ({endpoint.paths.config}); edit that file, or delete the endpoint first"
        )
    chosen = {"display_name": name, **(settings or {})}
    EndpointConfig.from_mapping(chosen, source="the given settings")
    endpoint.paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(endpoint.paths.root, 0o700)
    endpoint.paths.config.write_text(config_template(name, chosen))
    return endpoint.paths.config


def register_endpoint(name: str, client: Any) -> EndpointConnection:
    """Register with the forwarder (keeping the id from an earlier registration) and save the
    broker credentials it hands out."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    config = endpoint.config()
    metadata = {
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
        "taskfabric_version": __version__,
        "display_name": config.display_name or name,
    }
    answer = client.register_endpoint(name, endpoint_id=endpoint.endpoint_id(), metadata=metadata)
    connection = EndpointConnection.from_registration(answer)
    connection.save(endpoint.paths.connection)
    return connection


def start_endpoint(name: str, *, detach: bool, wait_s: float = 15.0) -> int:
    """Run the agent: in the background under its supervisor, which restarts it when it crashes
    (returns the agent's pid once it is up), or in this process (returns its exit code). The
    endpoint must be registered (`register_endpoint`)."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    endpoint.config()  # validate before starting anything
    running = endpoint.pid() or endpoint.supervisor_pid()
    if running is not None:
        raise TaskfabricError(f"endpoint {name!r} is already running (pid {running})")
    if not detach:
        from taskfabric.endpoint_agent.cli_agent import run_agent

        return run_agent(endpoint.paths.root)
    endpoint.paths.pid.unlink(missing_ok=True)  # a stale one, from an agent killed earlier
    supervisor = spawn_detached(
        [sys.executable, "-m", "taskfabric", "agent", "supervise", "--endpoint-dir", str(endpoint.paths.root)],
        log=endpoint.paths.root / "agent.stdout",
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pid = endpoint.pid()
        if pid is not None:
            return pid
        if not _alive(supervisor):
            raise TaskfabricError(f"the agent of {name!r} exited at once; see {endpoint.paths.log} and agent.stdout")
        time.sleep(0.05)
    raise TaskfabricError(f"the agent of {name!r} did not start within {wait_s:g} s; see {endpoint.paths.log}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_endpoint(name: str, *, timeout_s: float | None = None) -> bool:
    """Stop the agent gracefully (running tasks may finish), and its supervisor; False if neither
    was running."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    pid, supervisor = endpoint.pid(), endpoint.supervisor_pid()
    if pid is None and supervisor is None:
        return False
    if timeout_s is None:
        timeout_s = endpoint.config().drain_timeout_s + 30.0
    # the supervisor passes SIGTERM on to the agent and does not restart it
    _signal(supervisor if supervisor is not None else pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if endpoint.pid() is None and endpoint.supervisor_pid() is None:
            return True
        time.sleep(0.1)
    for stuck in (endpoint.supervisor_pid(), endpoint.pid()):  # its tasks stay in the ledger, run at next start
        _signal(stuck, signal.SIGKILL)
    endpoint.paths.pid.unlink(missing_ok=True)
    endpoint.paths.supervisor_pid.unlink(missing_ok=True)
    return True


def _signal(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def list_local_endpoints() -> list[dict[str, Any]]:
    root = endpoints_root()
    if not root.is_dir():
        return []
    return [
        LocalEndpoint(entry.name).describe() for entry in sorted(root.iterdir()) if (entry / "config.yaml").exists()
    ]


def delete_endpoint(name: str, client: Any | None) -> None:
    """Stop the endpoint, delete it from the forwarder (if registered) and remove its folder."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    stop_endpoint(name)
    endpoint_id = endpoint.endpoint_id()
    if endpoint_id is not None and client is not None:
        client.delete_endpoint(endpoint_id)
    shutil.rmtree(endpoint.paths.root)
