"""Operator tooling as real processes on real stores (SQLite and PostgreSQL): `forwarder migrate`,
`serve` refusing an unmigrated store (or migrating it with --migrate), every command refusing a
store newer than itself, `admin` never creating a stray store, `serve` needing amqp_url,
database_url and management_url named, and `forwarder check-config`."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from taskfabric.exit_codes import RET_BROKER, RET_CONFIG, RET_ERROR, RET_OK
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.store.schema import MIGRATIONS
from taskfabric.testing import BrokerUnderTest

TASKFABRIC = str(Path(sys.executable).parent / "taskfabric")
LATEST = len(MIGRATIONS)
#: a broker nobody listens on: a command that got past the store check fails there, quickly
NOWHERE = "amqp_url: amqp://u:p@127.0.0.1:1/%2F\nmanagement_url: http://u:p@127.0.0.1:1\nbroker_connect_timeout_s: 1\n"


def _run(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {"TASKFABRIC_HOME": str(home), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", **(env or {})}
    return subprocess.run([TASKFABRIC, *args], capture_output=True, text=True, env=environ, timeout=120, check=False)


@contextlib.contextmanager
def _postgres_schema(database_url: str) -> Iterator[str]:
    """A fresh, empty namespace in the session's PostgreSQL database, as its own store URL (the
    connection's search_path points at it), dropped afterwards."""
    name = f"tf_ops_{secrets.token_hex(4)}"
    admin = create_engine(database_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{database_url}?options={urllib.parse.quote(f'-csearch_path={name}')}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store (nothing created yet) on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with _postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


def _make_v1_store(url: str) -> uuid.UUID:
    """A store as schema version 1 left it (no v2 columns, indexes or dead-letter table), holding
    one user and one task; returns the task's id."""
    with Store.open(url) as store:
        user = store.users.create("old-timer", auth="local")
    task_id = uuid.uuid4()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_tasks_group"))
        connection.execute(text("DROP INDEX ix_tasks_owner_created"))
        connection.execute(text("DROP TABLE dead_letters"))
        for column in ("task_group_id", "stdout", "stderr", "cancel_requested_at"):
            connection.execute(text(f"ALTER TABLE tasks DROP COLUMN {column}"))
        for column in ("queue_rebuilt_at", "scaling", "status_reason"):
            connection.execute(text(f"ALTER TABLE endpoints DROP COLUMN {column}"))
        connection.execute(text("UPDATE schema_version SET version = 1"))
        connection.execute(
            text(
                "INSERT INTO tasks (task_id, owner_id, endpoint_id, function_id, status, created_at, client_python,"
                " attempts) VALUES (:task, :owner, :endpoint, :function, 'waiting', :now, '3.11.0', 0)"
            ),
            {
                "task": task_id if engine.dialect.name == "postgresql" else task_id.hex,
                "owner": user.user_id if engine.dialect.name == "postgresql" else user.user_id.hex,
                "endpoint": uuid.uuid4() if engine.dialect.name == "postgresql" else uuid.uuid4().hex,
                "function": uuid.uuid4() if engine.dialect.name == "postgresql" else uuid.uuid4().hex,
                "now": time.time(),
            },
        )
    engine.dispose()
    return task_id


def _version(url: str) -> int:
    return Store.status(url).version


def _one_clear_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr + done.stdout
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


# --- migrate, and serve on an unmigrated store ------------------------------------------------


def test_migrate_upgrades_an_old_store_and_serve_refuses_it_until_then(store_url: str, tmp_path: Path) -> None:
    task_id = _make_v1_store(store_url)
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: '{store_url}'\n{NOWHERE}")

    refused = _run("forwarder", "serve", "--config", str(config), home=tmp_path)
    assert refused.returncode == RET_ERROR
    line = _one_clear_line(refused)
    assert f"has schema version 1; this taskfabric needs {LATEST}" in line
    assert "taskfabric forwarder migrate --config FILE" in line and "--migrate" in line
    assert _version(store_url) == 1  # serve changed nothing

    migrated = _run("forwarder", "migrate", "--config", str(config), home=tmp_path)
    assert migrated.returncode == RET_OK, migrated.stderr
    assert f"schema version 1 -> {LATEST}" in migrated.stdout
    assert _version(store_url) == LATEST
    with Store.open(store_url) as store:  # the v2 parts are there, the old rows intact
        assert {"task_group_id", "cancel_requested_at"} <= {
            c["name"] for c in inspect(store.engine).get_columns("tasks")
        }
        assert inspect(store.engine).has_table("dead_letters")
        assert store.tasks.get_many([task_id])[task_id].status.value == "waiting"
        assert store.users.find("old-timer") is not None
    again = _run("forwarder", "migrate", "--config", str(config), "--json", home=tmp_path)
    assert json.loads(again.stdout) == {
        "database": json.loads(again.stdout)["database"],
        "before": LATEST,
        "after": LATEST,
    }

    # now serve gets past the store (and stops at the broker nobody runs)
    served = _run("forwarder", "serve", "--config", str(config), home=tmp_path)
    assert served.returncode == RET_BROKER, served.stderr


def test_serve_with_migrate_upgrades_the_store_first(store_url: str, tmp_path: Path) -> None:
    _make_v1_store(store_url)
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: '{store_url}'\n{NOWHERE}")
    served = _run("forwarder", "serve", "--config", str(config), "--migrate", home=tmp_path)
    assert served.returncode == RET_BROKER, served.stderr  # migrated, then on to the (absent) broker
    assert _version(store_url) == LATEST


# --- a store newer than this taskfabric -------------------------------------------------------


def test_every_command_refuses_a_newer_store_in_one_line(store_url: str, tmp_path: Path) -> None:
    with Store.open(store_url) as store, store.engine.begin() as connection:
        connection.execute(text("UPDATE schema_version SET version = :v"), {"v": LATEST + 7})
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: '{store_url}'\n{NOWHERE}")
    by_url = ("--database-url", store_url)
    for command in (
        ("admin", "list-users", *by_url),
        ("admin", "create-user", "eve", "--config", str(config)),
        ("admin", "dead-letters", "list", *by_url),
        ("forwarder", "migrate", "--config", str(config)),
        ("forwarder", "serve", "--config", str(config)),
    ):
        done = _run(*command, home=tmp_path)
        assert done.returncode == RET_ERROR, (command, done.stderr)
        line = _one_clear_line(done)
        assert f"has schema version {LATEST + 7}, newer than this taskfabric knows ({LATEST})" in line, command
    assert _version(store_url) == LATEST + 7


# --- no stray stores, no default broker or database for serve ---------------------------------


def test_admin_without_config_refuses_to_create_a_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    default_store = home / "forwarder" / "forwarder.db"
    typo = tmp_path / "forwrder.db"
    for command in (
        ("admin", "create-user", "alice"),
        ("admin", "list-users", "--json"),
        ("admin", "create-user", "alice", "--database-url", f"sqlite:///{typo}"),
    ):
        done = _run(*command, home=home)
        assert done.returncode == RET_ERROR, done.stdout
        assert "there is no taskfabric store at" in _one_clear_line(done)
        assert "--config" in done.stderr
    assert not default_store.exists() and not default_store.parent.exists() and not typo.exists()
    # the same through TASKFABRIC_FORWARDER_CONFIG: a settings file names the forwarder's store
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: sqlite:///{tmp_path / 'real.db'}\n")
    made = _run("admin", "create-user", "alice", home=home, env={"TASKFABRIC_FORWARDER_CONFIG": str(config)})
    assert made.returncode == RET_OK, made.stderr
    assert (tmp_path / "real.db").exists() and not default_store.exists()


@pytest.mark.parametrize("missing", ["amqp_url", "database_url", "management_url"])
def test_serve_refuses_settings_without_a_broker_or_database_named(missing: str, tmp_path: Path) -> None:
    named = {
        "amqp_url": "amqp://u:p@127.0.0.1:1/%2F",  # nobody listens there: serve stops at the broker
        "database_url": f"sqlite:///{tmp_path / 'fw.db'}",
        "management_url": "http://u:p@127.0.0.1:1",
    }
    config = tmp_path / "forwarder.yaml"
    lines = [f"{key}: '{value}'\n" for key, value in named.items() if key != missing]
    config.write_text("".join(lines) + "port: 0\nbroker_connect_timeout_s: 1\n")
    done = _run("forwarder", "serve", "--config", str(config), home=tmp_path)
    assert done.returncode == RET_CONFIG
    line = _one_clear_line(done)
    assert line.startswith(f"Error: {missing}: not set in {config}")
    assert f"TASKFABRIC_FORWARDER_{missing.upper()}" in line and f"--{missing.replace('_', '-')}" in line
    assert not (tmp_path / "forwarder").exists()  # no default store was created in TASKFABRIC_HOME
    # named in the environment instead, it counts (and serve goes on, to the absent broker)
    env = {f"TASKFABRIC_FORWARDER_{missing.upper()}": named[missing]}
    assert _run("forwarder", "serve", "--config", str(config), home=tmp_path, env=env).returncode == RET_BROKER


# --- check-config -----------------------------------------------------------------------------


def test_check_config_validates_summarises_and_reaches_store_and_broker(
    broker: BrokerUnderTest, tmp_path: Path
) -> None:
    assert broker.management_url
    database = tmp_path / "fw.db"
    config = tmp_path / "forwarder.yaml"
    config.write_text(
        f"database_url: sqlite:///{database}\namqp_url: '{broker.amqp_url}'\n"
        f"management_url: '{broker.management_url}'\nbroker_connect_timeout_s: 5\n"
    )
    done = _run("forwarder", "check-config", "--config", str(config), home=tmp_path)
    assert done.returncode == RET_OK, done.stdout + done.stderr
    assert f"settings of {config}: valid" in done.stdout
    password = urllib.parse.urlsplit(broker.amqp_url).password
    assert password and password not in done.stdout  # the summary shows no secrets
    assert "store       ok: reachable, empty" in done.stdout
    assert "broker      ok: connected to vhost" in done.stdout
    assert "management  ok: answers (" in done.stdout
    assert not database.exists()  # checking created nothing
    as_json = json.loads(_run("forwarder", "check-config", "--config", str(config), "--json", home=tmp_path).stdout)
    assert as_json["ok"] is True and [check["name"] for check in as_json["checks"]] == ["store", "broker", "management"]
    assert as_json["summary"]["auth"] == "local"


def test_check_config_offline_only_validates_and_a_bad_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: sqlite:///{tmp_path / 'fw.db'}\n{NOWHERE}")
    offline = _run("forwarder", "check-config", "--config", str(config), "--offline", home=tmp_path)
    assert offline.returncode == RET_OK, offline.stderr
    assert "valid" in offline.stdout and "amqp://u:***@127.0.0.1:1/%2F" in offline.stdout
    assert " ok: " not in offline.stdout and "FAILED" not in offline.stdout  # nothing was reached
    online = _run("forwarder", "check-config", "--config", str(config), home=tmp_path)
    assert online.returncode == RET_ERROR
    assert "broker      FAILED: could not connect to the broker" in online.stdout
    assert "management  FAILED" in online.stdout
    config.write_text(f"database_url: sqlite:///{tmp_path / 'fw.db'}\n{NOWHERE}max_payload_bytes: lots\n")
    bad = _run("forwarder", "check-config", "--config", str(config), "--offline", home=tmp_path)
    assert bad.returncode == RET_CONFIG
    assert "max_payload_bytes: expected an integer" in _one_clear_line(bad)
    config.write_text(NOWHERE)
    unnamed = _run("forwarder", "check-config", "--config", str(config), "--offline", home=tmp_path)
    assert unnamed.returncode == RET_CONFIG and "database_url: not set" in _one_clear_line(unnamed)
