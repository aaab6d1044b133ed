"""`taskfabric endpoint ...`: turn this machine into an endpoint, and manage it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
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
from taskfabric.errors import ConfigError, InvalidRequest
from taskfabric.exit_codes import RET_BROKER, RET_OK, RET_STOPPED
from taskfabric.secret_env import exec_without_secrets
from taskfabric.settings import describe_settings

if TYPE_CHECKING:
    from taskfabric.client import Client

__all__ = ["access_lines", "endpoint", "resolve_endpoint_id", "share_endpoint", "unshare_endpoint"]


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
    if info.get("user_endpoints") is not None:
        _print_user_endpoints(info["user_endpoints"])
    if info["problem"]:
        click.secho(
            f"problem: {info['problem']}; run `taskfabric endpoint restart {info['name']}`", fg="red", err=False
        )


def _print_user_endpoints(rows: list[dict[str, Any]]) -> None:
    """A multi-user endpoint's user endpoint processes, one line each."""
    if not rows:
        click.echo("user endpoints: none started yet")
        return
    click.echo(f"{'user':24} {'account':16} {'state':9} {'tasks':>5}  {'started':19}  pid")
    for row in rows:
        started = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started_at"])) if row.get("started_at") else "-"
        )
        tasks = "-" if row.get("tasks") is None else str(row["tasks"])
        line = f"{row['user']:24} {row.get('account') or '-':16} {row['state']:9} {tasks:>5}  {started:19}"
        click.echo(f"{line}  {row.get('pid') or '-'}" + (f"  {row['error']}" if row.get("error") else ""))


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


# --- sharing (issue 13): who besides you may use an endpoint ------------------------------


def resolve_endpoint_id(name: str, client: Client) -> str:
    """The endpoint NAME means: an endpoint id as it is; the name of an endpoint folder on this
    machine (its registered id); else the name of an endpoint you own, or one shared with you
    (by name, when only one has it)."""
    try:
        return str(uuid.UUID(name))
    except ValueError:
        pass
    with contextlib.suppress(ConfigError):
        local_id = LocalEndpoint(name).endpoint_id()
        if local_id:
            return local_id
    named = [item for item in client.list_endpoints() if item.get("name") == name]
    owned = [item for item in named if item.get("role") == "owner"]
    matches = owned or named
    if len(matches) == 1:
        return str(matches[0]["endpoint_id"])
    if not matches:
        raise InvalidRequest(f"no endpoint named {name!r} here or among your endpoints and those shared with you")
    choices = ", ".join(f"{item['endpoint_id']} (owner {item.get('owner')})" for item in matches)
    raise InvalidRequest(f"several endpoints are named {name!r}: name one by id ({choices})")


def resolve_group_id(group: str, client: Client) -> str:
    """A group id as it is; a group name through the groups you belong to (ambiguous: an error
    listing the ids)."""
    return str(client.resolve_group(group))


def share_endpoint(
    client: Client,
    name: str,
    *,
    user: str | None,
    group: str | None,
    role: str,
    max_waiting_tasks: int | None = None,
    max_tasks_per_day: int | None = None,
) -> dict[str, Any]:
    """Grant `role` on endpoint NAME to a user or a group; returns the new access document."""
    _one_principal(user, group)
    endpoint_id = resolve_endpoint_id(name, client)
    return client.share_endpoint(
        endpoint_id,
        user=user,
        group=resolve_group_id(group, client) if group is not None else None,
        role=role,
        max_waiting_tasks=max_waiting_tasks,
        max_tasks_per_day=max_tasks_per_day,
    )


def unshare_endpoint(client: Client, name: str, *, user: str | None, group: str | None) -> dict[str, Any]:
    _one_principal(user, group)
    endpoint_id = resolve_endpoint_id(name, client)
    return client.unshare_endpoint(
        endpoint_id, user=user, group=resolve_group_id(group, client) if group is not None else None
    )


def _one_principal(user: str | None, group: str | None) -> None:
    if (user is None) == (group is None):
        raise click.UsageError("give exactly one of --user or --group")


def access_lines(document: dict[str, Any]) -> list[str]:
    """The access document in words, one line each."""
    lines = [
        f"endpoint {document['endpoint_id']} (owner {document['owner']})",
        f"public: {'yes (every authenticated user may submit)' if document['public'] else 'no'}",
    ]
    if not document["grants"]:
        lines.append("no grants")
    for grant in document["grants"]:
        who = f"user {grant['user']}" if grant.get("user") else f"group {grant.get('group_name') or grant['group']}"
        limits = [
            f"{key}={grant[key]}" for key in ("max_waiting_tasks", "max_tasks_per_day") if grant.get(key) is not None
        ]
        lines.append(f"{who}: {grant['role']}" + (f" ({', '.join(limits)})" if limits else ""))
    return lines


_ROLE = click.Choice(["submit", "manage"])


@endpoint.command()
@click.argument("name")
@click.option("--user", help="A username (or user id).")
@click.option("--group", help="A group name (one of your groups) or id.")
@click.option("--role", type=_ROLE, default="submit", show_default=True, help="manage: also share it, see all tasks.")
@click.option("--max-waiting-tasks", type=click.IntRange(min=0), default=None, help="Their unfinished tasks, at most.")
@click.option("--max-tasks-per-day", type=click.IntRange(min=0), default=None, help="Their tasks per UTC day, at most.")
@click.option("--json", "as_json", is_flag=True, help="Print the new access document as JSON.")
def share(
    name: str,
    user: str | None,
    group: str | None,
    role: str,
    max_waiting_tasks: int | None,
    max_tasks_per_day: int | None,
    as_json: bool,
) -> None:
    """Let a user or a group submit to (or manage) endpoint NAME."""
    with _client() as client:
        document = share_endpoint(
            client,
            name,
            user=user,
            group=group,
            role=role,
            max_waiting_tasks=max_waiting_tasks,
            max_tasks_per_day=max_tasks_per_day,
        )
    click.echo(json.dumps(document) if as_json else "\n".join(access_lines(document)))


@endpoint.command()
@click.argument("name")
@click.option("--user", help="A username (or user id).")
@click.option("--group", help="A group name (one of your groups) or id.")
@click.option("--json", "as_json", is_flag=True, help="Print the new access document as JSON.")
def unshare(name: str, user: str | None, group: str | None, as_json: bool) -> None:
    """Remove a user's or a group's grant on endpoint NAME (their accepted tasks still run)."""
    with _client() as client:
        document = unshare_endpoint(client, name, user=user, group=group)
    click.echo(json.dumps(document) if as_json else "\n".join(access_lines(document)))


@endpoint.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: public, grants.")
def access(name: str, as_json: bool) -> None:
    """Who besides its owner may use endpoint NAME."""
    with _client() as client:
        document = client.get_endpoint_access(resolve_endpoint_id(name, client))
    click.echo(json.dumps(document) if as_json else "\n".join(access_lines(document)))


@endpoint.command()
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off"]))
def public(name: str, state: str) -> None:
    """Let every authenticated user submit to endpoint NAME (on), or only its grants (off)."""
    with _client() as client:
        document = client.set_endpoint_public(resolve_endpoint_id(name, client), state == "on")
    click.echo("\n".join(access_lines(document)))


@endpoint.command()
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of events.")
def audit(name: str, limit: int, as_json: bool) -> None:
    """Sharing changes and other users' submissions on endpoint NAME, newest first."""
    with _client() as client:
        events = client.get_endpoint_audit(resolve_endpoint_id(name, client), limit=limit)
    if as_json:
        click.echo(json.dumps(events))
        return
    for event in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at"]))
        click.echo(f"{when}  {event['actor']:20} {event['action']:18} {json.dumps(event['detail'])}")


# --- allow-lists (issue 13) ---------------------------------------------------------------


@endpoint.command(name="allowed-functions")
@click.argument("name")
@click.option("--set", "function_ids", multiple=True, help="Run only this function id (repeatable; replaces the list).")
@click.option("--clear", is_flag=True, help="Remove the allow-list: run any function.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: {endpoint_id, allowed_functions}.")
def allowed_functions(name: str, function_ids: tuple[str, ...], clear: bool, as_json: bool) -> None:
    """Show or set the functions endpoint NAME (an id, a local endpoint, or one of yours or shared
    with you on the service) runs. config.yaml's `allowed_functions`, when set, replaces this list at each start."""
    if function_ids and clear:
        raise click.UsageError("give --set or --clear, not both")
    with _client() as client:
        endpoint_id = resolve_endpoint_id(name, client)
        if clear:
            listed = client.set_allowed_functions(endpoint_id, None)
        elif function_ids:
            listed = client.set_allowed_functions(endpoint_id, function_ids)
        else:
            listed = client.get_allowed_functions(endpoint_id)
    if as_json:
        click.echo(json.dumps({"endpoint_id": endpoint_id, "allowed_functions": listed}))
    elif listed is None:
        click.echo(f"endpoint {name} runs any function (no allow-list)")
    else:
        click.echo(f"endpoint {name} runs only: {', '.join(listed) if listed else '(no function)'}")
