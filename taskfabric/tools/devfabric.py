"""`taskfabric dev up | down | status`: a whole fabric on this machine, in one command.

`dev up` starts a private RabbitMQ node, a forwarder on SQLite, a user `dev` with a token, and an
endpoint named `local` (its workers on this machine), and writes the client config so that
`Client()` with no arguments talks to it. Everything lives in `$TASKFABRIC_HOME/dev/` (the endpoint
in `$TASKFABRIC_HOME/endpoints/local/`); `dev down` stops it all, keeping the data for next time.

This module composes the components (broker_config, forwarder, endpoint_agent, client), so it
imports them lazily, inside its functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import httpx
import yaml

from taskfabric.daemon import spawn_detached
from taskfabric.errors import TaskfabricError
from taskfabric.exit_codes import RET_OK, RET_STOPPED
from taskfabric.paths import taskfabric_home
from taskfabric.processes import free_port, listens_on, pid_alive, port_free, terminate_then_kill
from taskfabric.protocol import EndpointState

__all__ = ["DevState", "dev", "dev_down", "dev_root", "dev_status", "dev_up"]

DEV_USER = "dev"
DEV_ENDPOINT = "local"
DEFAULT_PORT = 8470
#: where the Globus Compute SDK's `local` environment looks for its web service
GLOBUS_COMPUTE_PORT = 5000


def dev_root() -> Path:
    """The dev fabric's folder: its state, the forwarder's settings (`forwarder.yaml`) and store,
    the broker node (`broker/`)."""
    return taskfabric_home() / "dev"


_root = dev_root


@dataclasses.dataclass
class DevState:
    """What `dev up` started (saved in `dev/state.json`, mode 0600)."""

    forwarder_url: str = ""
    forwarder_pid: int | None = None
    endpoint_id: str | None = None
    token: str = ""
    globus_compute: bool = False

    @classmethod
    def load(cls) -> DevState:
        try:
            return cls(**json.loads((_root() / "state.json").read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return cls()

    def save(self) -> None:
        path = _root() / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(self), handle, indent=2)


def dev_up(*, workers: int | None = None, globus_compute: bool = False, announce: Any = print) -> DevState:
    """Start (or find running) the broker, the forwarder and the `local` endpoint. With
    `globus_compute`, the forwarder serves the Globus-Compute-compatible API too, on
    127.0.0.1:5000 (where the SDK's `local` environment looks); `TaskfabricError` names the port
    when it is taken."""
    from taskfabric.broker_config import RabbitNode

    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    state = DevState.load()
    alive = _forwarder_alive(state)
    if globus_compute:
        _check_compute_port(state, alive)  # before anything is made
    node = RabbitNode(root / "broker")
    prepared = node.prepare()  # before the boot thread: only one of us may configure the node
    announce("starting the broker (a private RabbitMQ node)...")
    # the node boots for seconds without us: prepare the store and the token meanwhile
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-start") as pool:
        booting = pool.submit(node.start)
        if not alive:
            port = GLOBUS_COMPUTE_PORT if globus_compute else (_port_of(state.forwarder_url) or DEFAULT_PORT)
            if not globus_compute and not port_free(port, reuse_address=True):  # kept across restarts (TIME_WAIT)
                port = free_port()
            state.forwarder_url = f"http://127.0.0.1:{port}"
            state.globus_compute = globus_compute
            settings_file = _write_forwarder_settings(
                root, prepared.amqp_url, prepared.management_url, port, globus_compute=globus_compute
            )
            state.token = _dev_token(settings_file, saved=state.token)
        info = booting.result()
    if not alive:
        if info != prepared:  # the node moved to free ports
            settings_file = _write_forwarder_settings(
                root, info.amqp_url, info.management_url, port, globus_compute=globus_compute
            )
        announce("starting the forwarder (SQLite store)...")
        try:
            state.forwarder_pid = _start_forwarder(root, settings_file, state.forwarder_url)
        except _PortTaken:
            if globus_compute:
                raise TaskfabricError(f"port {port} was taken while the forwarder started") from None
            port = free_port()  # another process took it since we looked: once more, elsewhere
            state.forwarder_url = f"http://127.0.0.1:{port}"
            settings_file = _write_forwarder_settings(
                root, info.amqp_url, info.management_url, port, globus_compute=globus_compute
            )
            state.forwarder_pid = _start_forwarder(root, settings_file, state.forwarder_url)
    state.save()
    _save_client_config(state)
    announce(f"starting endpoint {DEV_ENDPOINT!r}...")
    state.endpoint_id = _start_local_endpoint(state, workers)
    state.save()
    _wait_online(state)
    return state


def dev_down(*, announce: Any = print) -> None:
    """Stop the endpoint, the forwarder and the broker (their data stays)."""
    from taskfabric.broker_config import RabbitNode
    from taskfabric.endpoint_agent.local import LocalEndpoint, stop_endpoint

    state = DevState.load()
    if LocalEndpoint(DEV_ENDPOINT).exists and stop_endpoint(DEV_ENDPOINT, timeout_s=60):
        announce(f"stopped endpoint {DEV_ENDPOINT!r}")
    if _forwarder_alive(state) and state.forwarder_pid:
        terminate_then_kill(state.forwarder_pid, 30)
        announce("stopped the forwarder")
    state.forwarder_pid = None
    state.save()
    node = RabbitNode(_root() / "broker")
    if node.is_running():
        node.stop()
        announce("stopped the broker")


def dev_status() -> dict[str, Any]:
    """Whether each part runs, the forwarder's URL and the `local` endpoint's id."""
    from taskfabric.broker_config import RabbitNode
    from taskfabric.endpoint_agent.local import LocalEndpoint

    state = DevState.load()
    endpoint = LocalEndpoint(DEV_ENDPOINT)
    return {
        "forwarder_url": state.forwarder_url or None,
        "endpoint_id": state.endpoint_id,
        "broker_running": RabbitNode(_root() / "broker").is_running(),
        "forwarder_running": _forwarder_alive(state),
        "endpoint_running": endpoint.exists and endpoint.pid() is not None,
    }


# --- steps ----------------------------------------------------------------------------------


def _check_compute_port(state: DevState, alive: bool) -> None:
    """The Globus Compute API needs port 5000: refuse early, naming it, when it cannot have it."""
    port = GLOBUS_COMPUTE_PORT
    if alive:
        if state.globus_compute and _port_of(state.forwarder_url) == port:
            return
        raise TaskfabricError(
            f"the dev forwarder runs at {state.forwarder_url} without the Globus Compute API: run "
            "`taskfabric dev down` first, then `taskfabric dev up --globus-compute`"
        )
    if not port_free(port, reuse_address=True):
        raise TaskfabricError(
            f"port {port} on 127.0.0.1 is taken: the Globus Compute SDK's local environment "
            f"(GLOBUS_SDK_ENVIRONMENT=local) calls http://localhost:{port}; stop what listens there"
        )


def _write_forwarder_settings(
    root: Path, amqp_url: str, management_url: str, port: int, *, globus_compute: bool = False
) -> Path:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "database_url": f"sqlite:///{root / 'forwarder.db'}",
        "amqp_url": amqp_url,
        "management_url": management_url,
        "endpoint_offline_after_s": 15.0,
        "status_period_s": 2.0,
        "globus_compute": {"enabled": globus_compute},
        # one user on their own machine: the per-user submit rate (50/s by default) guards a
        # shared service, and here it only throttled interactive use (sequential
        # `submit().result()` runs at 100-200 calls/s; each refusal cost a 1 s Retry-After)
        "quotas": {"submit_requests_per_s": 0},
    }
    path = root / "forwarder.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(settings, handle)
    return path


def _dev_token(settings_file: Path, *, saved: str) -> str:
    """The `dev` user's token: the saved one while the store still has that user, else a new one
    (the store is new, or its file was deleted)."""
    from taskfabric.forwarder.admin import create_token, create_user, list_users
    from taskfabric.forwarder.deployment import migrate_store
    from taskfabric.forwarder.settings import ForwarderSettings

    settings = ForwarderSettings.from_file(settings_file)
    migrate_store(settings)  # the dev store is the developer's own: upgrade it with taskfabric
    if DEV_USER in {user.username for user in list_users(settings)}:
        if saved:
            return saved
    else:
        create_user(settings, DEV_USER)
    return create_token(settings, DEV_USER, description="taskfabric dev up")


class _PortTaken(TaskfabricError):
    """The forwarder could not listen: another process holds its port."""


def _start_forwarder(root: Path, settings_file: Path, url: str) -> int:
    port = _port_of(url)
    assert port is not None, url
    pid = spawn_detached(
        [
            sys.executable,
            "-m",
            "taskfabric",
            "--log-level",
            "INFO",
            "forwarder",
            "serve",
            "--config",
            str(settings_file),
        ],
        log=root / "forwarder.log",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            if not port_free(port, reuse_address=True):
                raise _PortTaken(port) from None
            raise TaskfabricError(f"the forwarder exited at once; see {root / 'forwarder.log'}") from None
        # our forwarder, not another process on that port (another fabric on this machine)
        if listens_on(pid, port) and _answers(url):
            return pid
        time.sleep(0.1)
    raise TaskfabricError(f"the forwarder did not answer within 60 s; see {root / 'forwarder.log'}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _save_client_config(state: DevState) -> None:
    from taskfabric.client.config import ClientConfig

    ClientConfig(url=state.forwarder_url, token=state.token).save()


def _start_local_endpoint(state: DevState, workers: int | None) -> str:
    from taskfabric.client import Client
    from taskfabric.endpoint_agent.local import (
        LocalEndpoint,
        configure_endpoint,
        register_endpoint,
        start_endpoint,
        stop_endpoint,
    )

    endpoint = LocalEndpoint(DEV_ENDPOINT)
    if not endpoint.exists:
        configure_endpoint(
            DEV_ENDPOINT,
            settings={
                "display_name": "this machine (taskfabric dev)",
                "scaling": {"workers_per_node": workers or os.cpu_count() or 1},
                "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
                "heartbeat_period_s": 5.0,
                "heartbeat_threshold_s": 30.0,
                "status_period_s": 2.0,
            },
        )
    with Client(url=state.forwarder_url, token=state.token) as client:
        if endpoint.pid() is not None:
            reused = _reusable_agent(client)
            if reused is not None:
                return reused
            stop_endpoint(DEV_ENDPOINT, timeout_s=60)  # restarted below, registered afresh
        connection = register_endpoint(DEV_ENDPOINT, client)
    start_endpoint(DEV_ENDPOINT, detach=True)
    return str(connection.endpoint_id)


def _reusable_agent(client: Any) -> str | None:
    """The id of the running `local` agent when it can go on as it is: the service knows its
    endpoint and the broker takes its credentials. Registering again would re-key a live agent."""
    from taskfabric.endpoint_agent.local import LocalEndpoint
    from taskfabric.errors import NotFoundError

    endpoint = LocalEndpoint(DEV_ENDPOINT)
    endpoint_id = endpoint.endpoint_id()
    if endpoint_id is None or endpoint.problem() is not None:
        return None
    try:
        client.get_endpoint(endpoint_id)
    except NotFoundError:  # a new store (its file was deleted): register again
        return None
    return endpoint_id


def _wait_online(state: DevState, timeout_s: float = 60.0) -> None:
    from taskfabric.client import Client

    deadline = time.monotonic() + timeout_s
    with Client(url=state.forwarder_url, token=state.token) as client:
        while time.monotonic() < deadline:
            status = client.get_endpoint_status(str(state.endpoint_id))
            if status.get("status") == EndpointState.ONLINE and status.get("workers"):
                return
            time.sleep(0.05)
    raise TaskfabricError(f"endpoint {DEV_ENDPOINT!r} did not come online within {timeout_s:g} s")


# --- helpers --------------------------------------------------------------------------------


def _forwarder_alive(state: DevState) -> bool:
    if not state.forwarder_pid or not state.forwarder_url or not pid_alive(state.forwarder_pid):
        return False
    port = _port_of(state.forwarder_url)
    return port is not None and listens_on(state.forwarder_pid, port) and _answers(state.forwarder_url)


def _port_of(url: str) -> int | None:
    try:
        return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]) if url else None
    except (IndexError, ValueError):
        return None


# --- commands -------------------------------------------------------------------------------


@click.group()
def dev() -> None:
    """A local fabric (broker, forwarder, endpoint `local`) for trying taskfabric out."""


@dev.command()
@click.option("--detach", is_flag=True, help="Return once everything is up (stop it with `taskfabric dev down`).")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Workers of the `local` endpoint (default: CPUs)."
)
@click.option(
    "--globus-compute",
    is_flag=True,
    help="Also serve the Globus-Compute-compatible API, on 127.0.0.1:5000 (see `taskfabric globus-compute env`).",
)
def up(detach: bool, workers: int | None, globus_compute: bool) -> None:
    """Start the local fabric and point `Client()` at it."""
    state = dev_up(workers=workers, globus_compute=globus_compute, announce=click.echo)
    click.echo(f"\nforwarder: {state.forwarder_url}\nendpoint {DEV_ENDPOINT!r}: {state.endpoint_id}")
    click.echo("Client() and Executor(endpoint_id) now work without arguments for the URL and token.")
    if detach:
        click.echo("stop it with: taskfabric dev down")
        return
    click.echo("press Ctrl-C to stop")
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        signal.sigwait(stop_signals)
    finally:
        dev_down(announce=click.echo)


@dev.command()
def down() -> None:
    """Stop the local fabric."""
    dev_down(announce=click.echo)


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON line (forwarder_url, endpoint_id, ...).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Whether the local fabric runs (exit code 3 when not), its URL and endpoint id."""
    info = dev_status()
    if as_json:
        click.echo(json.dumps(info))
    else:
        for key, value in info.items():
            click.echo(f"{key + ':':19} {value}")
    running = info["broker_running"] and info["forwarder_running"] and info["endpoint_running"]
    ctx.exit(RET_OK if running else RET_STOPPED)
