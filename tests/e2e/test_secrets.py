"""Secrets stay out of logs and out of other users' reach, over a whole run of real processes: a
forwarder, an endpoint agent with its managers and workers, the client in this process and
`taskfabric login` as a subprocess under umask 022."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from taskfabric.client import Client, Executor
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.local import LocalEndpoint
from taskfabric.testing import unique_name

pytestmark = pytest.mark.slow

Fabric = Any  # the `own_forwarder` fixture of tests/e2e/conftest.py

#: files that exist to hold a secret (read only by their owner): every other file is a log
_SECRET_HOLDERS = {"client.json", "connection.json"}
_STORES = (".db", ".sqlite", ".db-wal", ".db-shm", ".sqlite-wal", ".sqlite-shm")


#: this test's own raw WebSocket connections log their URLs and headers (not taskfabric's code)
_RAW = logging.getLogger("tests.raw-websocket")


def square(x: int) -> int:
    return x * x


def _texts_of_logs(*folders: Path) -> dict[Path, str]:
    found: dict[Path, str] = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.name not in _SECRET_HOLDERS and not path.name.endswith(_STORES):
                found[path] = path.read_text(errors="replace")
    return found


def _login_under_umask_022(url: str, token: str, home: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "taskfabric", "login", "--url", url, "--token", token]
    return subprocess.run(
        command,
        check=False,
        env={**os.environ, "TASKFABRIC_HOME": str(home)},
        preexec_fn=lambda: os.umask(0o022),  # the umask of a usual shell
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_token_or_broker_password_appears_in_any_log_of_a_run(
    own_forwarder: Fabric, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fabric = own_forwarder
    name = unique_name("secret-ep")
    endpoint_id = fabric.start_endpoint(name)
    with Client(url=fabric.url, token=fabric.token) as client, Executor(endpoint_id, client=client) as ex:
        assert ex.submit(square, 7).result(timeout=60) == 49

    ws_url = fabric.url.replace("http://", "ws://") + "/v1/results/ws"
    # the server takes the token from the Authorization header only; a token in the query
    # string (as some clients send it) must not reach the logs either way
    with connect(
        f"{ws_url}?token={fabric.token}",
        additional_headers={"Authorization": f"Bearer {fabric.token}"},
        open_timeout=15,
        logger=_RAW,
    ) as stream:
        stream.send(msgpack.packb({"ping": 1}))
        assert msgpack.unpackb(stream.recv(timeout=15)) == {"pong": 1}
    refused_token = "tf_" + "R" * 43
    with pytest.raises(InvalidStatus):
        connect(f"{ws_url}?token={refused_token}", open_timeout=15, logger=_RAW)
    with pytest.raises(InvalidStatus):  # the token only in the query string: not accepted
        connect(f"{ws_url}?access_token={fabric.token}", open_timeout=15, logger=_RAW)

    login_home = tmp_path / "login-home"
    login_home.mkdir()
    stale = login_home / "client.json"
    stale.write_text('{"url": "http://127.0.0.1:1", "token": "tf_old", "ca_file": null}')
    os.chmod(stale, 0o644)  # as an older taskfabric (or an editor) left it
    logged_in = _login_under_umask_022(fabric.url, fabric.token, login_home)
    assert logged_in.returncode == 0, logged_in.stderr
    assert stat.S_IMODE(os.stat(stale).st_mode) == 0o600

    connection = EndpointConnection.load(LocalEndpoint(name).paths.connection)
    password = urllib.parse.unquote(urllib.parse.urlsplit(connection.amqp_url).password or "")
    assert len(password) >= 16
    secrets = {"user token": fabric.token, "refused token": refused_token, "broker password": password}
    logs = _texts_of_logs(tmp_path)  # the forwarder's folder, its store's, the endpoint's home
    logs[Path("<client log records>")] = "\n".join(
        f"{record.name}: {record.getMessage()}" for record in caplog.records if record.name != _RAW.name
    )
    logs[Path("<taskfabric login output>")] = logged_in.stdout + logged_in.stderr
    names = {path.name for path in logs}
    assert {"forwarder.log", "agent.log", "audit.jsonl"} <= names, names
    assert any(path.name.startswith("worker-") for path in logs), names  # the managers' worker logs
    # logs hold user names, task ids and task output: this user's only (the umask here is 022)
    private = [
        path
        for path in logs
        if path.name in ("agent.log", "agent.stdout", "manager.log", "audit.jsonl") or path.name.startswith("worker-")
    ]
    assert {str(path): oct(stat.S_IMODE(os.stat(path).st_mode)) for path in private} == {
        str(path): oct(0o600) for path in private
    }
    leaks = [
        (what, str(path), next(line for line in text.splitlines() if secret in line)[:200])
        for path, text in logs.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert leaks == []
    # the query string was logged (by uvicorn), redacted
    assert "WebSocket /v1/results/ws?token=[redacted]" in logs[fabric.forwarder.log_file]
