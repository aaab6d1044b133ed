"""`taskfabric endpoint ...`: turn this machine into an endpoint, and manage it."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    delete_endpoint,
    list_local_endpoints,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.exit_codes import RET_OK, RET_STOPPED
from taskfabric.settings import describe_settings

__all__ = ["endpoint"]


def _client() -> Any:
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
    """Register endpoint NAME with the service and run its agent."""
    with _client() as client:
        connection = register_endpoint(name, client)
    click.echo(f"endpoint {name} registered: id {connection.endpoint_id}")
    if detach:
        pid = start_endpoint(name, detach=True)
        click.echo(f"agent running in the background (pid {pid}); logs: {LocalEndpoint(name).paths.log}")
    else:
        raise SystemExit(start_endpoint(name, detach=False))


@endpoint.command()
@click.argument("name")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=None,
    help="Seconds to wait for running tasks (default: drain_timeout_s + 30).",
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
    """Stop endpoint NAME and start it again in the background (applies config changes)."""
    LocalEndpoint(name).config()  # a broken config.yaml is refused before anything stops
    stop_endpoint(name)
    with _client() as client:
        connection = register_endpoint(name, client)
    pid = start_endpoint(name, detach=True)
    click.echo(f"endpoint {name} ({connection.endpoint_id}) restarted (pid {pid})")


@endpoint.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, name: str, as_json: bool) -> None:
    """Local and service-side status of endpoint NAME (exit code 3 when not running)."""
    local = LocalEndpoint(name)
    local.require()
    info = local.describe()
    endpoint_id = info["endpoint_id"]
    if endpoint_id:
        try:
            with _client() as client:
                remote = client.get_endpoint_status(endpoint_id)
            info["service"] = {
                key: remote.get(key)
                for key in (
                    "status",
                    "managers",
                    "workers",
                    "idle_workers",
                    "outstanding_tasks",
                    "pending_blocks",
                    "running_blocks",
                    "last_heartbeat_at",
                    "status_reason",
                )
            }
        except Exception as exc:  # the service may be down; local state still helps
            info["service"] = {"error": str(exc)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        for key, value in info.items():
            click.echo(f"{key + ':':14} {value}")
    ctx.exit(RET_OK if info["state"] == "running" else RET_STOPPED)


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
        click.echo(f"{row['name']:20} {row['state']:15} {row['endpoint_id'] or '-'}")


@endpoint.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask.")
def delete(name: str, yes: bool) -> None:
    """Stop endpoint NAME, delete it from the service and remove its folder."""
    if not yes:
        click.confirm(f"delete endpoint {name} and its folder?", abort=True)
    local = LocalEndpoint(name)
    local.require()
    if local.endpoint_id():
        with _client() as client:
            delete_endpoint(name, client)
    else:
        delete_endpoint(name, None)
    click.echo(f"endpoint {name} deleted")


@endpoint.command(name="config-keys")
def config_keys() -> None:
    """Every config.yaml key with its type, default and meaning."""
    for doc in describe_settings(EndpointConfig):
        click.echo(f"{doc.key}  ({doc.type}, default {doc.default})\n    {doc.help}\n")
