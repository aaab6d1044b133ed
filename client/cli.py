"""`taskfabric login | whoami | task status|show|result`: the researcher's commands."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import click

from taskfabric.client.client import Client
from taskfabric.client.config import ClientConfig
from taskfabric.errors import TaskfabricError, TaskFailed, TaskPending
from taskfabric.exit_codes import RET_ERROR, RET_STOPPED

__all__ = ["login", "login_to", "shown_task", "task", "whoami"]


def login_to(url: str, token: str) -> dict[str, Any]:
    """Check the token against the service, then save URL and token for `Client()`."""
    with Client(url=url, token=token) as client:
        identity = client.whoami()
    ClientConfig(url=url.rstrip("/"), token=token).save()
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
def login(url: str, token: str) -> None:
    """Save the service URL and your token, so that `Client()` needs no arguments."""
    identity = login_to(url, token)
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
