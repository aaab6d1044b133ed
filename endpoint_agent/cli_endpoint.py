"""`taskfabric endpoint ...`: turn this machine into an endpoint, and manage it."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any

import click

from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    LocalState,
    configure_endpoint,
    delete_endpoint,
    endpoint_status,
    list_local_endpoints,
    register_or_reuse,
    require_not_running,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.exit_codes import RET_BROKER, RET_OK, RET_STOPPED
from taskfabric.secret_env import exec_without_secrets
from taskfabric.settings import describe_settings

if TYPE_CHECKING:
    from taskfabric.client import Client

__all__ = ["endpoint"]


def _client() -> Client:
    from taskfabric.client import Client

    return Client()


@click.group()
def endpoint() -> None:
    """Create, start, stop and inspect endpoints on this machine."""


@endpoint.command()
@click.argument("name")
@click.option(
    "--workers",
    "workers_per_node",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes per node (default: CPUs here).",
)
@click.option("--max-blocks", type=click.IntRange(min=1), default=None, help="Most blocks of managers to run at once.")
@click.option("--overwrite", is_flag=True, help="Replace an existing config.yaml.")
def configure(name: str, workers_per_node: int | None, max_blocks: int | None, overwrite: bool) -> None:
    """Create endpoint NAME with a documented config.yaml to edit."""
    settings: dict[str, Any] = {"scaling": {"workers_per_node": workers_per_node or os.cpu_count() or 1}}
    provider: dict[str, Any] = {
        "type": "LocalProvider",
        "init_blocks": 1,
        "min_blocks": 0,
        "max_blocks": max_blocks or 1,
    }
    settings["provider"] = provider
    path = configure_endpoint(name, settings=settings, overwrite=overwrite)
    click.echo(f"created {path}\nedit it, then run: taskfabric endpoint start {name}")


@endpoint.command()
@click.argument("name")
@click.option("--detach", is_flag=True, help="Run the agent in the background (logs in the endpoint folder).")
def start(name: str, detach: bool) -> None:
    """Register endpoint NAME with the service and run its agent (refused while it runs; with the
    service unreachable, the saved registration is used)."""
    require_not_running(name)  # before anything touches the service: a re-registration re-keys the agent
    LocalEndpoint(name).config()
    connection = _register_or_reuse(name)
    click.echo(f"endpoint {name} registered: id {connection.endpoint_id}")
    if detach:
        pid = start_endpoint(name, detach=True)
        click.echo(f"agent running in the background (pid {pid}); logs: {LocalEndpoint(name).paths.log}")
    else:
        # the agent runs in this process: without the API token and broker password this process
        # was started with, which its tasks could otherwise read in /proc/PID/environ
        directory = str(LocalEndpoint(name).paths.root)
        exec_without_secrets(secrets=connection.secret_values(), command=["agent", "run", "--endpoint-dir", directory])
        raise SystemExit(start_endpoint(name, detach=False))


def _register_or_reuse(name: str) -> EndpointConnection:
    with _client() as client:
        connection, warning = register_or_reuse(name, client)
    if warning:
        click.secho(warning, fg="yellow", err=True)
    return connection


@endpoint.command()
@click.argument("name")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help=(
        "Seconds to wait for running tasks (default: drain_timeout_s + 30); then the agent, its managers "
        "and workers are killed (their tasks run again at the next start)."
    ),
)
def stop(name: str, timeout_s: float | None) -> None:
    """Stop endpoint NAME: it takes no new tasks; running ones finish (or run again at next start)."""
    if stop_endpoint(name, timeout_s=timeout_s):
        click.echo(f"endpoint {name} stopped")
    else:
        click.echo(f"endpoint {name} was not running")


@endpoint.command()
@click.argument("name")
def restart(name: str) -> None:
    """Stop endpoint NAME and start it again in the background (applies config changes; with the
    service unreachable, the saved registration is used)."""
    LocalEndpoint(name).config()  # a broken config.yaml is refused before anything stops
    stop_endpoint(name)
    connection = _register_or_reuse(name)
    pid = start_endpoint(name, detach=True)
    click.echo(f"endpoint {name} ({connection.endpoint_id}) restarted (pid {pid})")


@endpoint.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.pass_context
def status(ctx: click.Context, name: str, as_json: bool) -> None:
    """Local and service-side status of endpoint NAME (exit code 3 when not running, 5 when the
    broker refuses its agent)."""
    info = endpoint_status(name, _client)
    if as_json:
        click.echo(json.dumps(info))
    else:
        _print_status(info)
    if info["state"] != LocalState.RUNNING:
        ctx.exit(RET_STOPPED)
    ctx.exit(RET_BROKER if info["problem"] else RET_OK)


def _print_status(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"endpoint {info['name']}", show_header=False, title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    for label, value in _status_rows(info):
        table.add_row(label, value)
    Console(highlight=False, width=max(100, Console().width)).print(table)
    if info["problem"]:
        click.secho(
            f"problem: {info['problem']}; run `taskfabric endpoint restart {info['name']}`", fg="red", err=False
        )


def _status_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    state = info["state"] + (f" (pid {info['pid']})" if info["pid"] else "")
    rows = [
        ("display name", info["display_name"] or "-"),
        ("endpoint id", info["endpoint_id"] or "-"),
        ("agent", state),
        ("directory", info["directory"]),
    ]
    if info.get("restarts"):
        rows.append(("restarts", f"{info['restarts']} (last exit: {info.get('last_exit_reason') or '-'})"))
    service = info.get("service")
    if service is None:
        return rows
    if "error" in service:
        return [*rows, ("service", f"could not ask: {service['error']}")]
    heartbeat = service["last_heartbeat_at"]
    seen = f"{max(0.0, time.time() - heartbeat):.0f} s ago" if heartbeat else "never"
    return [
        *rows,
        ("service", f"{service['status']} (last report {seen})"),
        ("managers", str(service["managers"])),
        ("workers", f"{service['workers']} ({service['idle_workers']} idle)"),
        ("outstanding tasks", str(service["outstanding_tasks"])),
        ("blocks", f"{service['running_blocks']} running, {service['pending_blocks']} pending"),
        ("scaling", service["scaling"] or "-"),
        *([("reason", service["status_reason"])] if service.get("status_reason") else []),
    ]


@endpoint.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json: bool) -> None:
    """The endpoints on this machine."""
    rows = list_local_endpoints()
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no endpoints here; create one with `taskfabric endpoint configure NAME`")
    for row in rows:
        shown = f"{row['name']:20} {row['state']:15} {row['endpoint_id'] or '-':36}"
        click.echo(f"{shown}  {row['display_name']}" if row["display_name"] else shown)


@endpoint.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option(
    "--force",
    is_flag=True,
    help="Remove the local folder even when the service does not know the endpoint (404) or cannot be reached.",
)
def delete(name: str, yes: bool, force: bool) -> None:
    """Stop endpoint NAME, delete it from the service and remove its folder."""
    if not yes:
        click.confirm(f"delete endpoint {name} and its folder?", abort=True)
    local = LocalEndpoint(name)
    local.require()
    if local.endpoint_id():
        with _client() as client:
            note = delete_endpoint(name, client, force=force)
    else:
        note = delete_endpoint(name, None, force=force)
    if note:
        click.secho(note, fg="yellow")
    click.echo(f"endpoint {name} deleted")


@endpoint.command(name="config-keys")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of {key, type, default, help}.")
def config_keys(as_json: bool) -> None:
    """Every config.yaml key with its type, default and meaning."""
    from taskfabric.endpoint_agent.config import EndpointConfig  # brings Parsl: only for this command

    docs = describe_settings(EndpointConfig)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(doc) for doc in docs]))
        return
    for doc in docs:
        click.echo(f"{doc.key}  ({doc.type}, default {doc.default})\n    {doc.help}\n")
