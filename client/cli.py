"""`taskfabric login | whoami | task status|result|cancel`: the researcher's commands."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import click

from taskfabric.client.client import Client
from taskfabric.client.config import ClientConfig
from taskfabric.errors import TaskfabricError, TaskFailed, TaskPending
from taskfabric.exit_codes import RET_ERROR, RET_STOPPED

__all__ = ["cancel_tasks", "login", "login_to", "task", "whoami"]


def cancel_tasks(client: Client, task_ids: list[str]) -> dict[str, bool]:
    """Cancel tasks; for each id, whether this call cancelled it (False: finished, unknown or not yours)."""
    return {str(task_id): cancelled for task_id, cancelled in client.cancel(task_ids).items()}


def login_to(url: str, token: str, *, ca_file: str | None = None) -> dict[str, Any]:
    """Check the token against the service, then save URL, token and `ca_file` (the CA that signed
    the forwarder's certificate, stored as an absolute path) for `Client()`."""
    saved_ca = str(Path(ca_file).expanduser().absolute()) if ca_file else None
    with Client(url=url, token=token, ca_file=saved_ca) as client:
        identity = client.whoami()
    ClientConfig(url=url.rstrip("/"), token=token, ca_file=saved_ca).save()
    return identity


@click.command()
@click.option(
    "--url", prompt="Forwarder URL", default="http://127.0.0.1:8470", show_default=True, help="The service's URL."
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
def whoami() -> None:
    """Who the saved token belongs to."""
    with Client() as client:
        identity = client.whoami()
    click.echo(f"{identity.get('username')} ({identity.get('user_id')}, {identity.get('auth')}) at {client.config.url}")


@click.group()
def task() -> None:
    """Look at tasks by id."""


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True)
def status(task_id: str, as_json: bool) -> None:
    """Status and timestamps of a task."""
    with Client() as client:
        info = client.get_task(task_id)
    shown = {key: value for key, value in info.items() if key not in ("result",)}
    if isinstance(shown.get("error"), dict):
        shown["error"] = {key: value for key, value in shown["error"].items() if key != "exception"}
    if as_json:
        click.echo(json.dumps(shown))
    else:
        for key, value in shown.items():
            click.echo(f"{key + ':':14} {_readable(key, value)}")


def _readable(key: str, value: Any) -> Any:
    """Timestamps as local ISO times, nested maps one level deep."""
    if key.endswith("_at") and isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, dict):
        return ", ".join(f"{k}={_readable(k, v)}" for k, v in value.items())
    return value


@task.command()
@click.argument("task_id")
def result(task_id: str) -> None:
    """Print a task's result (exit code 3 while pending, 1 if it failed)."""
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
