"""Endpoints on this machine: their folders under `$TASKFABRIC_HOME/endpoints/NAME/`, and the plain
functions behind `taskfabric endpoint configure|start|stop|restart|status|list|delete`.

Each folder holds `config.yaml` (the endpoint's settings), `connection.json` (its id and broker
credentials, from registering with the forwarder), `ledger.sqlite` (tasks in hand), `agent.log`,
`agent.pid` while running, `supervisor.pid` and `supervisor.json` (the process that restarts a
crashed agent, and its restart count; see supervisor.py), and `blocks/` (provider scripts and
manager/worker logs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import platform
import re
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psutil
import yaml

from taskfabric import __version__
from taskfabric.daemon import spawn_detached
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.paths import AgentPaths
from taskfabric.endpoint_agent.supervisor import read_state as read_supervisor_state
from taskfabric.errors import ConfigError, NotFoundError, ServiceError, TaskfabricError
from taskfabric.paths import taskfabric_home
from taskfabric.processes import pid_alive
from taskfabric.secret_env import without_secrets
from taskfabric.settings import load_yaml

if TYPE_CHECKING:  # imported where used: it brings Parsl (~1 s of CPU) that status commands do not need
    from taskfabric.endpoint_agent.config import EndpointConfig

__all__ = [
    "ForwarderEndpoints",
    "LocalEndpoint",
    "LocalState",
    "configure_endpoint",
    "delete_endpoint",
    "endpoint_status",
    "endpoints_root",
    "list_local_endpoints",
    "register_endpoint",
    "register_or_reuse",
    "require_not_running",
    "start_endpoint",
    "stop_endpoint",
]


class ForwarderEndpoints(Protocol):
    """What the endpoint commands need of the forwarder's HTTP API (`taskfabric.client.Client`
    is one; tests may pass a stand-in)."""

    def register_endpoint(
        self,
        name: str,
        *,
        endpoint_id: uuid.UUID | str | None = None,
        metadata: dict[str, Any] | None = None,
        allowed_functions: Iterable[uuid.UUID | str] | None = None,
    ) -> dict[str, Any]: ...

    def delete_endpoint(self, endpoint_id: uuid.UUID | str) -> None: ...

    def get_endpoint_status(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]: ...


log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def endpoints_root() -> Path:
    return taskfabric_home() / "endpoints"


class LocalState(enum.StrEnum):
    """The state of an endpoint's agent on this machine (`endpoint list` / `endpoint status`);
    the service's view of the endpoint is an `EndpointState`."""

    RUNNING = "running"
    RESTARTING = "restarting"  # its supervisor is starting it again after a crash
    CRASHED = "crashed"  # its supervisor gave up
    STOPPED = "stopped"
    NOT_REGISTERED = "not registered"


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
        from taskfabric.endpoint_agent.config import EndpointConfig

        return EndpointConfig.from_file(self.paths.config)

    def problem(self) -> str | None:
        """What keeps the running agent from working, as it wrote it (None: nothing known)."""
        if self.pid() is None:
            return None
        try:
            return self.paths.problem.read_text().strip() or None
        except FileNotFoundError:
            return None

    def display_name(self) -> str | None:
        try:
            return self.config().display_name
        except ConfigError:
            return None

    def describe(self) -> dict[str, Any]:
        pid = self.pid()
        endpoint_id = self.endpoint_id()
        supervised = read_supervisor_state(self.paths.root)
        if pid:
            state = LocalState.RUNNING
        elif self.supervisor_pid():
            state = LocalState.RESTARTING
        elif supervised.get("gave_up"):
            state = LocalState.CRASHED
        else:
            state = LocalState.STOPPED if endpoint_id else LocalState.NOT_REGISTERED
        return {
            "name": self.name,
            "display_name": self.display_name(),
            "endpoint_id": endpoint_id,
            "state": state,
            "pid": pid,
            "problem": self.problem(),
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
    from taskfabric.endpoint_agent.config import EndpointConfig

    for field in dataclasses.fields(EndpointConfig):
        if field.name in settings:
            continue
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            default = dataclasses.asdict(default)  # e.g. scaling
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
    from taskfabric.endpoint_agent.config import EndpointConfig

    chosen = {"display_name": name, **(settings or {})}
    EndpointConfig.from_mapping(chosen, source="the given settings")
    endpoint.paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(endpoint.paths.root, 0o700)
    endpoint.paths.config.write_text(config_template(name, chosen))
    return endpoint.paths.config


def register_endpoint(name: str, client: ForwarderEndpoints) -> EndpointConnection:
    """Register with the forwarder (keeping the id from an earlier registration) and save the
    broker credentials it hands out."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    config = endpoint.config()
    metadata: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "python_version": platform.python_version(),
        "taskfabric_version": __version__,
        "display_name": config.display_name or name,
    }
    if config.multi_user:
        metadata["multi_user"] = True
    answer = client.register_endpoint(
        name, endpoint_id=endpoint.endpoint_id(), metadata=metadata, allowed_functions=config.allowed_functions
    )
    connection = EndpointConnection.from_registration(answer)
    connection.save(endpoint.paths.connection)
    return connection


def register_or_reuse(name: str, client: ForwarderEndpoints) -> tuple[EndpointConnection, str | None]:
    """Register with the forwarder; when the service cannot be reached, fall back on the cached
    registration (connection.json: the agent needs only the broker). Returns the connection and,
    for a fallback, a warning to show."""
    endpoint = LocalEndpoint(name)
    try:
        return register_endpoint(name, client), None
    except ServiceError as exc:
        if not _unreachable(exc):
            raise
        unreachable = exc
    try:
        cached = EndpointConnection.load(endpoint.paths.connection)
    except ConfigError:
        raise TaskfabricError(
            f"the service could not be reached and endpoint {name!r} was never registered: {unreachable}"
        ) from None
    warning = (
        f"warning: the service could not be reached ({unreachable}); using the registration saved in "
        f"{endpoint.paths.connection} (the agent needs only the broker)"
    )
    return cached, warning


def _unreachable(error: ServiceError) -> bool:
    """No answer at all, or the service failing (5xx): not a refusal worth stopping for."""
    return error.status == 0 or error.status >= 500


def require_not_running(name: str) -> None:
    """Raise if the endpoint's agent runs (before anything touches the service or its folder)."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    running = endpoint.pid()
    if running is not None:
        raise TaskfabricError(
            f"endpoint {name!r} is already running (pid {running}); nothing changed. "
            f"Apply config changes with `taskfabric endpoint restart {name}`"
        )


def start_endpoint(name: str, *, detach: bool, wait_s: float = 15.0) -> int:
    """Run the agent: in the background under its supervisor, which restarts it when it crashes
    (returns the agent's pid once it is up), or in this process (returns its exit code). The
    endpoint must be registered (`register_endpoint`)."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    if endpoint.config().multi_user:  # validated; and said here, not only in agent.log
        from taskfabric.endpoint_agent.multi_user.privilege import require_privilege

        try:
            require_privilege()
        except PermissionError as exc:
            raise TaskfabricError(str(exc)) from None
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
        # the API token that registered it and the broker password stay with this command
        env=without_secrets(os.environ, secrets=EndpointConnection.load(endpoint.paths.connection).secret_values()),
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pid = endpoint.pid()
        if pid is not None:
            return pid
        if not pid_alive(supervisor):
            raise TaskfabricError(f"the agent of {name!r} exited at once; see {endpoint.paths.log} and agent.stdout")
        time.sleep(0.05)
    raise TaskfabricError(f"the agent of {name!r} did not start within {wait_s:g} s; see {endpoint.paths.log}")


def stop_endpoint(name: str, *, timeout_s: float | None = None) -> bool:
    """Stop the agent gracefully (running tasks may finish), and its supervisor; False if neither
    was running.

    After `timeout_s` (default: drain_timeout_s + 30) they are killed; either way its managers
    and workers are gone when this returns (those still running are terminated, then killed).
    Tasks cut short stay in the ledger and run again at the next start."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    pid, supervisor = endpoint.pid(), endpoint.supervisor_pid()
    if pid is None and supervisor is None:
        return False
    if timeout_s is None:
        timeout_s = endpoint.config().drain_timeout_s + 30.0
    # the supervisor passes SIGTERM on to the agent and does not restart it
    _signal(supervisor if supervisor is not None else pid, signal.SIGTERM)
    grace_s = _BLOCK_EXIT_GRACE_S
    if not _wait_for(lambda: endpoint.pid() is None and endpoint.supervisor_pid() is None, timeout_s):
        log.warning("the agent of %s did not stop within %g s; killing it", name, timeout_s)
        for stuck in (endpoint.supervisor_pid(), endpoint.pid()):  # its tasks stay in the ledger, run at next start
            _signal(stuck, signal.SIGKILL)
        endpoint.paths.pid.unlink(missing_ok=True)
        endpoint.paths.supervisor_pid.unlink(missing_ok=True)
        grace_s = 0.0  # orphaned managers would wait for missed heartbeats: end them now
    _end_processes(_block_processes(endpoint), grace_s=grace_s)
    return True


#: managers of a cleanly stopped agent exit on their own (drained, their block cancelled)
_BLOCK_EXIT_GRACE_S = 5.0


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(pid: int | None, signum: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _block_processes(endpoint: LocalEndpoint) -> list[psutil.Process]:
    """The endpoint's managers (found by their block log folder on the command line: providers
    start them detached from the agent) and every process under them (workers, task children)."""
    marker = f"--log-dir {endpoint.paths.blocks}{os.sep}"
    found: list[psutil.Process] = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if "manager run" in command and marker in command:
            found.append(process)
            try:
                found.extend(process.children(recursive=True))
            except psutil.Error:
                continue
    return found


def _end_processes(processes: list[psutil.Process], *, grace_s: float) -> None:
    """Wait up to `grace_s` for `processes` to exit, then SIGTERM them, then SIGKILL what is left."""
    if not processes:
        return
    _gone, alive = psutil.wait_procs(processes, timeout=grace_s)
    for step in (psutil.Process.terminate, psutil.Process.kill):
        if not alive:
            return
        log.warning("ending %d leftover manager/worker processes", len(alive))
        for process in alive:
            try:
                step(process)
            except psutil.Error:
                continue
        _gone, alive = psutil.wait_procs(alive, timeout=2.0)


#: what `endpoint status` shows of the service's view (GET /v1/endpoints/ID/status)
SERVICE_STATUS_KEYS = (
    "status",
    "display_name",
    "managers",
    "workers",
    "idle_workers",
    "outstanding_tasks",
    "pending_blocks",
    "running_blocks",
    "scaling",
    "last_heartbeat_at",
    "status_reason",
)


def endpoint_status(
    name: str, client_factory: Callable[[], contextlib.AbstractContextManager[ForwarderEndpoints]]
) -> dict[str, Any]:
    """The local state of endpoint `name` and, under "service", what the service sees (or the
    error that kept us from asking it). `client_factory` opens a client (e.g. `Client`)."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    info = endpoint.describe()
    if _is_multi_user(endpoint):
        from taskfabric.endpoint_agent.multi_user.children import read_user_endpoints

        info["user_endpoints"] = read_user_endpoints(endpoint.paths.root)
    if info["endpoint_id"]:
        try:
            with client_factory() as client:
                remote = client.get_endpoint_status(info["endpoint_id"])
                for row in info.get("user_endpoints", []):
                    _add_service_counts(client, row)
            info["service"] = {key: remote.get(key) for key in SERVICE_STATUS_KEYS}
        except TaskfabricError as exc:  # the service may be down; local state still helps
            info["service"] = {"error": str(exc)}
    return info


def _add_service_counts(client: ForwarderEndpoints, row: dict[str, Any]) -> None:
    """A user endpoint's tasks (held by its agent now, as it last reported) and its service status."""
    row["tasks"], row["service_status"] = None, None
    if row.get("state") == "refused":
        return
    try:
        remote = client.get_endpoint_status(row["endpoint_id"])
    except TaskfabricError:
        return
    row["tasks"], row["service_status"] = remote.get("outstanding_tasks"), remote.get("status")


def _is_multi_user(endpoint: LocalEndpoint) -> bool:
    try:
        return bool(load_yaml(endpoint.paths.config).get("multi_user"))
    except ConfigError:
        return False


def list_local_endpoints() -> list[dict[str, Any]]:
    root = endpoints_root()
    if not root.is_dir():
        return []
    return [
        LocalEndpoint(entry.name).describe() for entry in sorted(root.iterdir()) if (entry / "config.yaml").exists()
    ]


def delete_endpoint(name: str, client: ForwarderEndpoints | None, *, force: bool = False) -> str | None:
    """Stop the endpoint, delete it from the forwarder (if registered) and remove its folder.

    When the service does not know the endpoint (404) or cannot be reached, the folder is kept
    (`TaskfabricError` says so) unless `force`: then it is removed anyway and a note is returned."""
    endpoint = LocalEndpoint(name)
    endpoint.require()
    stop_endpoint(name)
    endpoint_id = endpoint.endpoint_id()
    note = None
    if endpoint_id is not None and client is not None:
        try:
            client.delete_endpoint(endpoint_id)
        except NotFoundError:
            note = _not_deleted_on_service(name, endpoint_id, "the service does not know it", force=force)
        except ServiceError as exc:
            if not _unreachable(exc):
                raise
            note = _not_deleted_on_service(name, endpoint_id, f"the service could not be reached ({exc})", force=force)
    shutil.rmtree(endpoint.paths.root)
    return note


def _not_deleted_on_service(name: str, endpoint_id: str, why: str, *, force: bool) -> str:
    if not force:
        raise TaskfabricError(
            f"endpoint {name!r} ({endpoint_id}) was not deleted on the service: {why}. Its folder is kept; "
            f"delete the local folder anyway with `taskfabric endpoint delete {name} --force`"
        )
    return f"endpoint {endpoint_id} was not deleted on the service ({why}); deleted the local folder anyway"
