"""docs/operator.md "A production deployment, step by step", followed with real parts: a private
RabbitMQ node with a TLS listener (standing in for step 3's rabbitmq.conf; its management API is
plain HTTP on loopback), a vhost and the forwarder's broker user made through the management API
as the guide's curl lines do, a PostgreSQL role and database of their own, a forwarder serving
HTTPS with certificates made here, `check-config`, `migrate`, `admin` with `--config`, an endpoint
agent and a client running tasks through them, then the backup, upgrade and monitoring steps.
When the guide changes, change this test with it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from taskfabric.broker_config.certs import CertificateFiles, make_ca, make_server_certificate
from taskfabric.broker_config.node import NodeInfo, RabbitNode
from taskfabric.client import Client, Executor
from taskfabric.endpoint_agent.local import configure_endpoint, register_endpoint, start_endpoint, stop_endpoint
from taskfabric.exit_codes import RET_OK
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import unique_name, wait_until
from taskfabric.tls import client_ssl_context

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

TASKFABRIC = str(Path(sys.executable).parent / "taskfabric")
VHOST = "taskfabric"
FORWARDER_USER = "taskfabric-forwarder"
ENDPOINT_SETTINGS: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "drain_timeout_s": 20.0,
    "scaling": {"workers_per_node": 1, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


def square(x: int) -> int:
    return x * x


def _taskfabric(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"TASKFABRIC_HOME": str(home), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run([TASKFABRIC, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


# --- step 2: PostgreSQL, a role and a database of their own -------------------------------------


@contextlib.contextmanager
def _role_and_database(server_url: str) -> Iterator[tuple[str, str]]:
    """CREATE ROLE ... LOGIN PASSWORD; CREATE DATABASE ... OWNER (step 2) on the test server;
    yields the forwarder's SQLAlchemy URL and the libpq URL pg_dump takes; dropped afterwards."""
    import psycopg

    parts = urllib.parse.urlsplit(server_url)
    server_dsn = urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))
    name, password = f"tf_guide_{secrets.token_hex(4)}", secrets.token_hex(12)
    with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        connection.execute(f"CREATE DATABASE {name} OWNER {name}")
    netloc = f"{name}:{password}@{parts.hostname}:{parts.port}"
    try:
        yield f"postgresql+psycopg://{netloc}/{name}", f"postgresql://{netloc}/{name}"
    finally:
        with psycopg.connect(server_dsn, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.execute(f"DROP ROLE IF EXISTS {name}")


# --- step 3: the broker's vhost and the forwarder's user, through the management API ------------


def _management(info: NodeInfo) -> httpx.Client:
    """The broker's own administrator on its management API."""
    return httpx.Client(
        base_url=f"http://127.0.0.1:{info.management_port}/api", auth=(info.username, info.password), timeout=15
    )


def _make_vhost_and_forwarder_user(info: NodeInfo, password: str) -> None:
    with _management(info) as api:
        for path, body in (
            (f"/vhosts/{VHOST}", None),
            (f"/users/{FORWARDER_USER}", {"password": password, "tags": "administrator"}),
            (f"/permissions/{VHOST}/{FORWARDER_USER}", {"configure": ".*", "write": ".*", "read": ".*"}),
        ):
            api.put(path, json=body).raise_for_status()


def _permission_vhosts(info: NodeInfo, user: str) -> list[str]:
    with _management(info) as api:
        return sorted(permission["vhost"] for permission in api.get(f"/users/{user}/permissions").json())


def _connections(info: NodeInfo) -> dict[str, tuple[bool, str]]:
    """connection name -> (over TLS, vhost), as the broker sees them."""
    with _management(info) as api:
        return {
            str(c.get("client_properties", {}).get("connection_name")): (bool(c["ssl"]), c["vhost"])
            for c in api.get("/connections").json()
        }


# --- the walk-through -------------------------------------------------------------------------


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The endpoint's and the client's files in this test's folder."""
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path / "home"))
    for name in ("TASKFABRIC_URL", "TASKFABRIC_TOKEN", "TASKFABRIC_CA_FILE", "TASKFABRIC_ALLOW_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_the_production_deployment_guide(postgres_url: str, tmp_path: Path, isolated_home: Path) -> None:
    # 1. certificates: the forwarder's from a private CA; the broker node makes its own
    ca = make_ca(tmp_path / "pki", name="operator guide CA")
    forwarder_cert: CertificateFiles = make_server_certificate(
        ca, tmp_path / "pki", hostnames=["localhost", "127.0.0.1"]
    )
    node = RabbitNode(tmp_path / "broker", tls=True)
    info = node.start()
    try:
        assert info.amqps_port is not None and info.ca_file is not None
        # 2. PostgreSQL
        with _role_and_database(postgres_url) as (database_url, pg_dump_url):
            _walk_through(tmp_path, isolated_home, ca, forwarder_cert, info, database_url, pg_dump_url)
    finally:
        node.stop()


def _walk_through(
    folder: Path,
    home: Path,
    ca: CertificateFiles,
    certificate: CertificateFiles,
    info: NodeInfo,
    database_url: str,
    pg_dump_url: str,
) -> None:
    # 3. the broker: a vhost of its own and the forwarder's user, allowed there only
    broker_password = secrets.token_urlsafe(18)
    _make_vhost_and_forwarder_user(info, broker_password)
    assert _permission_vhosts(info, FORWARDER_USER) == [VHOST]

    # 4. the settings file, checked
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "tls": {"cert_file": str(certificate.cert_file), "key_file": str(certificate.key_file)},
        "database_url": database_url,
        "amqp_url": f"amqps://{FORWARDER_USER}:{broker_password}@127.0.0.1:{info.amqps_port}/{VHOST}",
        "management_url": f"http://{FORWARDER_USER}:{broker_password}@127.0.0.1:{info.management_port}",
        "broker_ca_file": info.ca_file,
        "metrics_token": secrets.token_urlsafe(24),
        # quick status reports, so the test does not wait for the production periods
        "status_period_s": 0.5,
        "endpoint_offline_after_s": 3.0,
        "status_flush_s": 0.2,
    }
    config = folder / "forwarder.yaml"
    config.touch(mode=0o600)
    config.write_text(yaml.safe_dump(values))
    checked = _taskfabric("forwarder", "check-config", "--config", str(config), home=home)
    assert checked.returncode == RET_OK, checked.stdout + checked.stderr
    assert "store       ok: reachable, empty" in checked.stdout
    assert f"broker      ok: connected to vhost '{VHOST}' as {FORWARDER_USER}" in checked.stdout
    database_password = urllib.parse.urlsplit(database_url).password
    assert database_password and database_password not in checked.stdout
    assert broker_password not in checked.stdout
    assert f"management  ok: answers (0 queues in vhost '{VHOST}')" in checked.stdout

    # 5. the schema and the first user
    migrated = _taskfabric("forwarder", "migrate", "--config", str(config), home=home)
    assert migrated.returncode == RET_OK and "schema version 0 -> " in migrated.stdout, migrated.stderr
    assert _taskfabric("admin", "create-user", "alice", "--config", str(config), home=home).returncode == RET_OK
    made = _taskfabric("admin", "create-token", "alice", "--config", str(config), home=home)
    assert made.returncode == RET_OK, made.stderr
    token = made.stdout.strip()

    # 6. serve (what the systemd unit's ExecStart runs)
    with ForwarderProcess(folder / "forwarder", values, ca_file=ca.cert_file) as forwarder:
        assert forwarder.url.startswith("https://")
        # 7. an endpoint and a client through them
        _run_tasks_through(forwarder.url, token, ca, info)
        # 10. what to monitor
        _monitoring_answers(forwarder.url, ca, values["metrics_token"])

    # 8. backups: pg_dump while (or after) serving, and the dump holds the tasks
    dump = folder / "store.dump"
    dumped = subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", pg_dump_url], capture_output=True, text=True, check=False
    )
    assert dumped.returncode == 0, dumped.stderr
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE DATA public tasks" in listing.stdout

    # 9. upgrades: migrate is idempotent; this store is current
    again = _taskfabric("forwarder", "migrate", "--config", str(config), home=home)
    assert again.returncode == RET_OK and "is up to date" in again.stdout


def _run_tasks_through(url: str, token: str, ca: CertificateFiles, info: NodeInfo) -> None:
    name = unique_name("guide-ep")
    configure_endpoint(name, settings=ENDPOINT_SETTINGS)
    try:
        with Client(url=url, token=token, ca_file=ca.cert_file) as client:
            connection = register_endpoint(name, client)
            broker_url = urllib.parse.urlsplit(connection.amqp_url)
            assert (broker_url.scheme, broker_url.path) == ("amqps", f"/{VHOST}")
            assert connection.ca_certificate == Path(str(info.ca_file)).read_text()
            start_endpoint(name, detach=True)
            endpoint_id = str(connection.endpoint_id)
            wait_until(
                lambda: (
                    (status := client.get_endpoint_status(endpoint_id))["status"] == "online" and status.get("workers")
                ),
                timeout_s=120,
                interval_s=0.2,
                what="the endpoint online through the guide's broker",
            )
            with Executor(endpoint_id, client=client) as executor:
                futures = [executor.submit(square, i) for i in range(10)]
                assert [future.result(timeout=120) for future in futures] == [i * i for i in range(10)]
        # the endpoint's own broker user may use the taskfabric vhost and nothing else; both links are TLS
        assert broker_url.username is not None
        assert _permission_vhosts(info, urllib.parse.unquote(broker_url.username)) == [VHOST]
        agent = f"taskfabric-agent-{endpoint_id}"
        wait_until(
            lambda: {agent, "taskfabric-forwarder"} <= set(_connections(info)),
            timeout_s=30,
            interval_s=0.5,
            what="the management API listing the agent's and the forwarder's connections",
        )
        seen = _connections(info)
        assert seen[agent] == (True, VHOST) and seen["taskfabric-forwarder"] == (True, VHOST), seen
    finally:
        stop_endpoint(name, timeout_s=60)


def _monitoring_answers(url: str, ca: CertificateFiles, metrics_token: str) -> None:
    verify = client_ssl_context(ca.cert_file)
    with httpx.Client(base_url=url, verify=verify, timeout=15) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert http.get("/metrics").status_code == 401
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"})
        assert metrics.status_code == 200 and "taskfabric_tasks_completed_total" in metrics.text
    status = subprocess.run(
        [TASKFABRIC, "forwarder", "status", "--url", url, "--ca-file", str(ca.cert_file), "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert status.returncode == RET_OK, status.stdout + status.stderr
    assert json.loads(status.stdout)["ready"] is True
