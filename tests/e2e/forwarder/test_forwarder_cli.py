"""The `taskfabric admin` and `taskfabric forwarder` commands as real processes, and one whole trip:
a token made on the command line, a served forwarder, a fake endpoint with its own credentials,
results streamed back; then a graceful stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import msgpack
import pytest
from websockets.sync.client import connect

from taskfabric.errors import TaskfabricError
from taskfabric.exit_codes import RET_BROKER, RET_CONFIG, RET_ERROR, RET_OK
from taskfabric.forwarder import ForwarderSettings, create_token, create_user, list_users, revoke_tokens
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi, ForwarderProcess
from taskfabric.protocol import Result
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

TASKFABRIC = str(Path(sys.executable).parent / "taskfabric")


def _run(*args: str, home: Path, timeout_s: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"TASKFABRIC_HOME": str(home), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run(
        [TASKFABRIC, *args], capture_output=True, text=True, env=env, timeout=timeout_s, check=False, input=stdin
    )


def test_admin_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    database = tmp_path / "forwarder.db"
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: sqlite:///{database}\n")
    created = _run("admin", "create-user", "alice", "--config", str(config), home=home)
    assert created.returncode == RET_OK, created.stderr
    assert "created user alice" in created.stdout
    # the store named by --config exists now: later commands may name it by URL alone
    store = ("--database-url", f"sqlite:///{database}")
    duplicate = _run("admin", "create-user", "alice", *store, home=home)
    assert duplicate.returncode == RET_ERROR
    assert "already exists" in duplicate.stderr
    token = _run("admin", "create-token", "alice", "--description", "laptop", *store, home=home)
    assert token.returncode == RET_OK and token.stdout.strip().startswith("tf_")
    assert _run("admin", "create-token", "nobody", *store, home=home).returncode == RET_ERROR
    assert _run("admin", "create-user", "bad name", *store, home=home).returncode == RET_ERROR
    listed = _run("admin", "list-users", "--json", *store, home=home)
    (row,) = json.loads(listed.stdout)  # one JSON document: the list of users
    assert (row["username"], row["auth"], row["tokens"]) == ("alice", "local", 1)
    assert token.stdout.strip().encode() not in database.read_bytes()  # only its hash is stored
    # revoking: the token comes on standard input (not in argv); a wrong one revokes nothing
    wrong = _run("admin", "revoke-token", "alice", *store, home=home, stdin="tf_not-a-token-of-alice\n")
    assert wrong.returncode == RET_ERROR and "not one of 'alice'" in wrong.stderr
    revoked = _run("admin", "revoke-token", "alice", *store, home=home, stdin=token.stdout)
    assert revoked.returncode == RET_OK, revoked.stderr
    assert "revoked 1 token(s) of alice" in revoked.stdout
    listed = _run("admin", "list-users", "--json", *store, home=home)
    assert [user["tokens"] for user in json.loads(listed.stdout)] == [0]


def test_admin_functions(tmp_path: Path) -> None:
    settings = ForwarderSettings(database_url=f"sqlite:///{tmp_path / 'f.db'}")
    user = create_user(settings, "bob")
    first, second = create_token(settings, "bob"), create_token(settings, "bob", description="ci")
    assert first != second
    assert [(u.username, u.tokens, u.user_id) for u in list_users(settings)] == [("bob", 2, user.user_id)]
    assert revoke_tokens(settings, "bob", token=first) == 1
    with pytest.raises(TaskfabricError, match="not one of 'bob'"):
        revoke_tokens(settings, "bob", token=first)  # already gone
    with pytest.raises(TaskfabricError, match="no local user named 'nobody'"):
        revoke_tokens(settings, "nobody")
    create_token(settings, "bob")
    assert revoke_tokens(settings, "bob") == 2  # --all
    assert [u.tokens for u in list_users(settings)] == [0]


def test_serve_refuses_bad_settings_and_an_unreachable_broker(tmp_path: Path) -> None:
    config = tmp_path / "forwarder.yaml"
    config.write_text("prot: 80\n")
    bad = _run("forwarder", "serve", "--config", str(config), home=tmp_path)
    assert bad.returncode == RET_CONFIG
    assert "prot: unknown key" in bad.stderr and "port" in bad.stderr
    config.write_text(
        f"port: 0\nbroker_connect_timeout_s: 1\ndatabase_url: sqlite:///{tmp_path / 'fw.db'}\n"
        "amqp_url: amqp://guest:guest@127.0.0.1:1/%2F\nmanagement_url: http://guest:guest@127.0.0.1:1\n"
    )
    unreachable = _run("forwarder", "serve", "--config", str(config), home=tmp_path)
    assert unreachable.returncode == RET_BROKER, unreachable.stderr
    assert "could not connect to the broker" in unreachable.stderr
    described = _run("forwarder", "settings", home=tmp_path)
    assert "max_payload_bytes" in described.stdout and "auth.provider" in described.stdout


def test_a_whole_trip_through_a_served_forwarder(broker: BrokerUnderTest, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'forwarder.db'}"
    settings = {
        "database_url": database_url,
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("e2e"),
        "auth": {"cache_max_age_s": 1},  # so a revoked token is refused within a second
    }
    process = ForwarderProcess(tmp_path / "run", settings).start()  # it creates the store
    assert _run("admin", "create-user", "carol", "--database-url", database_url, home=tmp_path).returncode == RET_OK
    token = _run("admin", "create-token", "carol", "--database-url", database_url, home=tmp_path).stdout.strip()
    try:
        with ForwarderApi(process.url, token) as carol:
            registration = carol.register_endpoint("carols-lab")
            function_id = carol.register_function(b"def f(x): return x" + uuid.uuid4().bytes)
            task_ids = carol.submit(registration["endpoint_id"], function_id, [b"%d" % i for i in range(500)])
            ws_url = process.url.replace("http://", "ws://") + "/v1/results/ws"
            with (
                connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as stream,
                FakeEndpoint(registration) as endpoint,
            ):
                stream.send(msgpack.packb({"subscribe": task_ids}))
                stream.send(msgpack.packb({"ping": "ready"}))
                assert msgpack.unpackb(stream.recv(timeout=15)) == {"pong": "ready"}
                endpoint.consume_tasks()
                wait_until(lambda: len(endpoint.task_ids) == 500, what="500 tasks at the endpoint")
                for batch in endpoint.batches:
                    endpoint.publish_results(
                        [Result(task_id=t.task_id, ok=True, value=b"r" + t.payload) for t in batch.tasks]
                    )
                received: dict[str, bytes] = {}
                while len(received) < 500:
                    for result in msgpack.unpackb(stream.recv(timeout=15))["results"]:
                        received[result["task_id"]] = result["value"]
            assert received == {task_id: b"r%d" % i for i, task_id in enumerate(task_ids)}
            assert httpx.get(f"{process.url}/openapi.json").json()["info"]["title"] == "taskfabric forwarder"
        # a revoked token stops working at the running forwarder once its cache entry expires
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{process.url}/v1/endpoints", headers=headers).status_code == 200
        revoke = _run("admin", "revoke-token", "carol", "--all", "--database-url", database_url, home=tmp_path)
        assert revoke.returncode == RET_OK, revoke.stderr
        wait_until(
            lambda: httpx.get(f"{process.url}/v1/endpoints", headers=headers).status_code == 401,
            timeout_s=10,
            what="the revoked token refused",
        )
    finally:
        # SIGTERM: a graceful stop (uvicorn re-raises the signal once it has shut down)
        assert process.stop() in (RET_OK, -signal.SIGTERM)
    log = process.log_file.read_text()
    assert "forwarder stopped" in log and "Traceback" not in log
