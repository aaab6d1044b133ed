"""`--json` everywhere: every command of the `taskfabric` tree that lists or shows something takes
`--json`, and then prints exactly one JSON document on standard output (against a real forwarder,
whatever the exit code says about the thing shown)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from taskfabric.cli import main
from taskfabric.client import Client
from taskfabric.client.config import ClientConfig
from taskfabric.exit_codes import RET_OK, RET_STOPPED
from taskfabric.forwarder.records import DeadLetterRecord
from taskfabric.forwarder.store import Store
from taskfabric.testing import unique_name

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

#: command names that list or show something (a new command named so must take --json)
LISTING_NAME = re.compile(r"list|list-.+|.+-list|status|show|result|whoami|settings|config-keys|dead-letters|info")


def _length(text: str) -> int:
    return len(text)


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{' '.join((*path, name))} is listed but cannot be loaded"
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name), command


def listing_commands() -> dict[tuple[str, ...], click.Command]:
    return {path: command for path, command in _leaves(main) if LISTING_NAME.fullmatch(path[-1])}


def _takes_json(command: click.Command) -> bool:
    return any("--json" in param.opts and getattr(param, "is_flag", False) for param in command.params)


def test_every_listing_command_takes_json() -> None:
    found = listing_commands()
    # the walk does find the commands (loaded lazily by the root group)
    assert {("whoami",), ("task", "list"), ("task", "result"), ("endpoint", "list"), ("admin", "list-users")} <= set(
        found
    )
    assert [" ".join(path) for path, command in found.items() if not _takes_json(command)] == []


def _arguments(fabric: Fabric, tmp_path: Path) -> dict[tuple[str, ...], list[str]]:
    """What each listing command needs besides `--json`, on this fabric."""
    with Client() as client:
        registered = client.register_endpoint(unique_name("offline"))  # never started: tasks wait
        function_id = client.register_function(_length)
        task_id = str(client.run("abc", endpoint_id=registered["endpoint_id"], function_id=function_id))
        group_name = unique_name("lab")
        client.create_group(group_name)
    dead_letter = DeadLetterRecord(
        dead_letter_id=uuid.uuid4(),
        task_id=None,
        endpoint_id=None,
        owner_id=None,
        reason="garbage on a result queue",
        deliveries=1,
        queue="q",
        created_at=time.time(),
        body=b"not a message",
    )
    with Store.open(fabric.settings.store_url) as store:
        store.dead_letters.add([dead_letter])
    local_endpoint = unique_name("local")  # configured, never started
    configured = CliRunner().invoke(main, ["endpoint", "configure", local_endpoint, "--workers", "1"])
    assert configured.exit_code == RET_OK, configured.output
    fabric.endpoints.append(local_endpoint)
    return {
        ("whoami",): [],
        ("task", "list"): [],
        ("task", "status"): [task_id],
        ("task", "show"): [task_id],
        ("task", "result"): [task_id],
        ("endpoint", "list"): [],
        ("endpoint", "status"): [local_endpoint],
        ("endpoint", "config-keys"): [],
        ("forwarder", "settings"): [],
        ("forwarder", "status"): ["--url", fabric.url],
        ("admin", "list-users"): ["--database-url", fabric.settings.database_url],
        ("admin", "list-tokens"): [fabric.username, "--database-url", fabric.settings.database_url],
        ("admin", "dead-letters", "list"): ["--database-url", fabric.settings.database_url],
        ("admin", "dead-letters", "show"): [
            str(dead_letter.dead_letter_id),
            "--database-url",
            fabric.settings.database_url,
        ],
        ("broker", "status"): ["--dir", str(tmp_path / "no-broker")],
        ("dev", "status"): [],
        ("group", "list"): [],
        ("group", "show"): [group_name],
    }


@pytest.mark.slow
@pytest.mark.parametrize("fabric", ["sqlite"], indirect=True)
def test_every_listing_command_prints_one_json_document(fabric: Fabric, tmp_path: Path) -> None:
    ClientConfig(url=fabric.url, token=fabric.token).save()
    arguments = _arguments(fabric, tmp_path)
    found = listing_commands()
    assert set(found) == set(arguments), "give the new listing command its arguments in _arguments()"
    runner = CliRunner()
    documents: dict[tuple[str, ...], Any] = {}
    for path, extra in arguments.items():
        outcome = runner.invoke(main, [*path, *extra, "--json"], catch_exceptions=False)
        assert outcome.exit_code in (RET_OK, RET_STOPPED), f"{' '.join(path)}: {outcome.output}"
        try:
            documents[path] = json.loads(outcome.stdout)  # exactly one document: anything more fails
        except ValueError as exc:
            raise AssertionError(f"`{' '.join(path)} --json` printed {outcome.stdout!r}: {exc}") from None
    assert documents[("whoami",)]["username"] == fabric.username
    task_id = arguments[("task", "status")][0]
    assert task_id in {task["task_id"] for task in documents[("task", "list")]}
    assert documents[("task", "status")]["task_id"] == task_id
    assert documents[("task", "result")] == {"task_id": task_id, "status": "waiting"}
    assert fabric.username in {user["username"] for user in documents[("admin", "list-users")]}
    assert documents[("broker", "status")]["running"] is False
    assert "amqp_url" in {setting["key"] for setting in documents[("forwarder", "settings")]}
    assert all(uuid.UUID(task["task_id"]) for task in documents[("task", "list")])
    group_name = arguments[("group", "show")][0]
    assert group_name in {group["name"] for group in documents[("group", "list")]}
    assert documents[("group", "show")]["members"][0]["username"] == fabric.username
