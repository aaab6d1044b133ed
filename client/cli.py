"""`taskfabric login | whoami | task list|status|show|result|cancel`: the researcher's commands.

Every command that shows something takes `--json` and then prints exactly one JSON document."""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from taskfabric.client.client import Client
from taskfabric.client.config import ClientConfig, parse_urls
from taskfabric.errors import InvalidRequest, TaskfabricError, TaskFailed, TaskPending
from taskfabric.exit_codes import RET_ERROR, RET_OK, RET_STOPPED
from taskfabric.protocol.states import TaskStatus

__all__ = [
    "cancel_tasks",
    "list_tasks",
    "login",
    "login_to",
    "parse_since",
    "result_document",
    "shown_task",
    "task",
    "top",
    "whoami",
]


def cancel_tasks(client: Client, task_ids: list[str]) -> dict[str, bool]:
    """Cancel tasks; for each id, whether this call cancelled it (False: finished, unknown or not yours)."""
    return {str(task_id): cancelled for task_id, cancelled in client.cancel(task_ids).items()}


def login_to(url: str, token: str, *, ca_file: str | None = None) -> dict[str, Any]:
    """Check the token against the service, then save URL, token and `ca_file` (the CA that signed
    the forwarder's certificate, stored as an absolute path) for `Client()`."""
    saved_ca = str(Path(ca_file).expanduser().absolute()) if ca_file else None
    urls = parse_urls(url, source="--url")
    with Client(url=urls, token=token, ca_file=saved_ca) as client:
        identity = client.whoami()
    ClientConfig(url=urls[0], token=token, ca_file=saved_ca, urls=urls).save()
    return identity


@click.command()
@click.option(
    "--url",
    prompt="Forwarder URL",
    default="http://127.0.0.1:8470",
    show_default=True,
    help="The service's URL; several replicas: comma-separated, the client fails over between them.",
)
@click.option(
    "--token",
    prompt="Token",
    hide_input=True,
    help="Your token (from `taskfabric admin create-token`, or a Globus access token).",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM CA certificate that signed the forwarder's certificate (a private CA); saved with the URL.",
)
def login(url: str, token: str, ca_file: str | None) -> None:
    """Save the service URL, your token (and --ca-file), so that `Client()` needs no arguments."""
    identity = login_to(url, token, ca_file=ca_file)
    click.echo(f"logged in to {url} as {identity.get('username')}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document: user_id, username, auth, url.")
def whoami(as_json: bool) -> None:
    """Who the saved token belongs to."""
    with Client() as client:
        identity = client.whoami()
    if as_json:
        click.echo(json.dumps({**identity, "url": client.config.url}))
        return
    click.echo(f"{identity.get('username')} ({identity.get('user_id')}, {identity.get('auth')}) at {client.config.url}")


@click.group()
def task() -> None:
    """List your tasks, look at one by id."""


# --- task list ----------------------------------------------------------------------------

_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_AGE_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PIPED_WIDTH = 160


def parse_since(text: str, *, now: float | None = None) -> float:
    """`--since` as seconds since the epoch: an age (`30m`, `2h`, `7d`), an ISO date or time
    (`2026-11-30`, `2026-11-30T06:00`, local time unless it names a zone), or epoch seconds."""
    value = text.strip()
    age = _AGE_RE.fullmatch(value)
    if age:
        return (time.time() if now is None else now) - float(age.group(1)) * _AGE_UNIT_S[age.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InvalidRequest(
            f"--since: {text!r} is not an age (30m, 2h, 7d), an ISO date or time, or seconds since the epoch"
        ) from None


def list_tasks(
    client: Client,
    *,
    status: str | None = None,
    endpoint_id: str | None = None,
    function_id: str | None = None,
    group_id: str | None = None,
    since: float | None = None,
    limit: int = 100,
    all_users: bool = False,
) -> list[dict[str, Any]]:
    """The newest `limit` of your tasks matching the filters (what `task list` prints); with
    `all_users`, everyone's tasks on `endpoint_id` (an endpoint you own or manage)."""
    found = client.list_tasks(
        status=status,
        endpoint_id=endpoint_id,
        function_id=function_id,
        group_id=group_id,
        since=since,
        limit=limit,
        page_size=min(limit, 1000) or 1,
        all_users=all_users,
    )
    return list(found)


def _task_table(tasks: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    table.add_column("task", no_wrap=True, min_width=36)
    for column in ("status", "endpoint", "function", "group", "created", "completed", "error"):
        table.add_column(column, overflow="fold")
    for info in tasks:
        table.add_row(
            info["task_id"],
            info["status"],
            _short(info["endpoint_id"]),
            _short(info["function_id"]),
            _short(info["task_group_id"]),
            _local_time(info["created_at"]),
            _local_time(info["completed_at"]),
            info["error_code"] or "",
        )
    return table


def _short(value: str | None) -> str:
    return value[:8] if value else "-"


def _local_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


@task.command(name="list")
@click.option("--status", type=click.Choice([state.value for state in TaskStatus]), help="Only tasks in this state.")
@click.option("--endpoint", "endpoint_id", help="Only tasks sent to this endpoint id.")
@click.option("--function", "function_id", help="Only tasks of this function id.")
@click.option("--group", "group_id", help="Only tasks of this task group (an Executor's task_group_id).")
@click.option("--since", help="Only tasks created since: an age (30m, 2h, 7d), an ISO date/time, or epoch seconds.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many tasks.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of task summaries.")
@click.option("--all-users", is_flag=True, help="With --endpoint (one you own or manage): every user's tasks on it.")
def list_command(
    status: str | None,
    endpoint_id: str | None,
    function_id: str | None,
    group_id: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    all_users: bool,
) -> None:
    """Your tasks, newest first."""
    with Client() as client:
        tasks = list_tasks(
            client,
            status=status,
            endpoint_id=endpoint_id,
            function_id=function_id,
            group_id=group_id,
            since=parse_since(since) if since else None,
            limit=limit,
            all_users=all_users,
        )
    if as_json:
        click.echo(json.dumps(tasks))
    elif not tasks:
        click.echo("no tasks")
    else:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # piped or captured: no terminal width to fit, keep every column whole
            console = Console(width=_PIPED_WIDTH)
        console.print(_task_table(tasks))


# --- one task -----------------------------------------------------------------------------


def shown_task(info: dict[str, Any]) -> dict[str, Any]:
    """A task's info as the CLI shows it: without the pickled result and exception."""
    shown = {key: value for key, value in info.items() if key not in ("result",)}
    if isinstance(shown.get("error"), dict):
        shown["error"] = {key: value for key, value in shown["error"].items() if key != "exception"}
    return shown


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def status(task_id: str, as_json: bool) -> None:
    """Status and timestamps of a task."""
    with Client() as client:
        shown = shown_task(client.get_task(task_id))
    if as_json:
        click.echo(json.dumps(shown))
    else:
        for key, value in shown.items():
            if key not in _OUTPUT_KEYS:
                click.echo(f"{key + ':':14} {_readable(key, value)}")


_OUTPUT_KEYS = ("stdout", "stderr")


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (as `GET /v1/tasks/{id}`, minus payloads).")
def show(task_id: str, as_json: bool) -> None:
    """A task: status (waiting, running, success, failed, cancelled), timestamps, attempts, its
    error if it failed, and its captured stdout and stderr."""
    with Client() as client:
        shown = shown_task(client.get_task(task_id))
    if as_json:
        click.echo(json.dumps(shown))
        return
    for key, value in shown.items():
        if key not in _OUTPUT_KEYS:
            click.echo(f"{key + ':':14} {_readable(key, value)}")
    for key in _OUTPUT_KEYS:
        text = shown.get(key) or ""
        click.echo(f"--- {key} ---" if text else f"--- {key} (empty) ---")
        if text:
            click.echo(text, nl=not text.endswith("\n"))


def _readable(key: str, value: Any) -> Any:
    """Timestamps as local ISO times, nested maps one level deep."""
    if key.endswith("_at") and isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, dict):
        return ", ".join(f"{k}={_readable(k, v)}" for k, v in value.items())
    return value


def result_document(client: Client, task_id: str) -> tuple[dict[str, Any], int]:
    """`task result --json`: (the document, the exit code). The value is given as JSON when it
    is JSON-serializable (`result`, else null) and always as its `repr` (`result_repr`)."""
    document: dict[str, Any] = {"task_id": str(uuid.UUID(task_id)) if _is_uuid(task_id) else task_id}
    try:
        value = client.get_result(task_id)
    except TaskPending as exc:
        return {**document, "status": exc.reason}, RET_STOPPED
    except TaskfabricError as exc:
        if not isinstance(exc, TaskFailed):
            raise  # e.g. an unknown id: reported by the root command
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": exc.remote_traceback}
        return {**document, "status": TaskStatus.FAILED.value, "error": error}, RET_ERROR
    except Exception as exc:  # the task's own exception, rebuilt
        traceback = str(exc.__cause__) if exc.__cause__ else ""
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback}
        return {**document, "status": TaskStatus.FAILED.value, "error": error}, RET_ERROR
    try:
        json.dumps(value, allow_nan=False)
        shown = value
    except (TypeError, ValueError):
        shown = None
    return {**document, "status": TaskStatus.SUCCESS.value, "result": shown, "result_repr": repr(value)}, RET_OK


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: status, result or error.")
def result(task_id: str, as_json: bool) -> None:
    """Print a task's result (exit code 3 while pending, 1 if it failed)."""
    if as_json:
        with Client() as client:
            document, code = result_document(client, task_id)
        click.echo(json.dumps(document))
        sys.exit(code)
    with Client() as client:
        try:
            value = client.get_result(task_id)
        except TaskPending as exc:
            click.echo(f"pending ({exc.reason})", err=True)
            sys.exit(RET_STOPPED)
        except TaskFailed as exc:
            click.echo(f"failed: {exc}", err=True)
            sys.exit(RET_ERROR)
        except TaskfabricError:
            raise  # e.g. an unknown id: reported by the root command
        except Exception as exc:  # the task's own exception, rebuilt
            cause = f"\n\nRemote traceback:\n{exc.__cause__}" if exc.__cause__ else ""
            click.echo(f"failed: {type(exc).__name__}: {exc}{cause}", err=True)
            sys.exit(RET_ERROR)
    click.echo(repr(value))


@task.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: {task_id: cancelled}.")
def cancel(task_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel tasks: waiting ones never run, running ones have their worker stopped. Exit code 1
    if none was cancelled (already finished, unknown or not yours)."""
    with Client() as client:
        answers = cancel_tasks(client, list(task_ids))
    if as_json:
        click.echo(json.dumps(answers))
    else:
        for task_id, cancelled in answers.items():
            click.echo(f"{task_id}  {'cancelled' if cancelled else 'not cancelled (finished, unknown or not yours)'}")
    if not any(answers.values()):
        sys.exit(RET_ERROR)


# --- top ----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.2, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes; rates are measured over this window.",
)
@click.option("--once", is_flag=True, help="Draw one frame and exit (for scripts).")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON document: one snapshot (endpoints, rates, recent failures)."
)
def top(interval_s: float, once: bool, as_json: bool) -> None:
    """A live view of your endpoints (status, workers, queue depth), task rates and recent
    failures, refreshed every --interval seconds; q (or Ctrl-C) quits."""
    from rich.console import Console

    from taskfabric.client.top import render_view, run_top, snapshot_document, take_snapshot

    with Client(timeout_s=10.0) as client:
        if as_json or once:  # one request, and its errors as the one-line message of the root command
            snapshot = take_snapshot(client, window_s=interval_s)
            if as_json:
                click.echo(json.dumps(snapshot_document(snapshot)))
            else:
                Console().print(render_view(snapshot))
            return
        try:
            run_top(client, interval_s=interval_s, console=Console(), keys_from=sys.stdin)
        except KeyboardInterrupt:  # Ctrl-C is a way to quit, not an error (the terminal is restored)
            return
