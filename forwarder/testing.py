"""Test helpers for the forwarder, usable by every component's tests: real parts, no mocks.

- `ForwarderProcess`: `taskfabric forwarder serve` as a subprocess on a free port, with a config
  file written for it; waits until it answers; stops it with SIGTERM.
- `postgres_for_tests()`: a throwaway PostgreSQL database: `TASKFABRIC_TEST_POSTGRES_URL` when set;
  else a fresh database on the server at 127.0.0.1:5432; else a private cluster started with
  Debian's `initdb`/`pg_ctl` in a temporary directory. If none works it raises `StoreError` naming
  what was tried (tests fail, they never skip).
- `GlobusAuthStandIn`: a loopback HTTP server implementing Globus Auth's token introspection
  (`POST /v2/oauth2/token/introspect`, form-encoded, HTTP Basic client auth); point
  `GLOBUS_SDK_SERVICE_URL_AUTH` at `.url` and the production code path talks to it.
- `FakeEndpoint`: the broker side of an endpoint agent, logged in with the endpoint's own
  credentials from its registration: reads task batches, publishes results and status reports.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from taskfabric.broker_config import EndpointPermissions
from taskfabric.errors import StoreError, TaskfabricError
from taskfabric.processes import free_port
from taskfabric.protocol import (
    BrokerAccess,
    CancelTasks,
    EndpointRegistered,
    EndpointState,
    EndpointStatus,
    Result,
    ResultBatch,
    TaskBatch,
    TaskEvents,
    pack,
    parse,
    unpack,
)
from taskfabric.testing import wait_until
from taskfabric.tls import client_ssl_context
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

__all__ = [
    "POSTGRES_URL_ENV",
    "FakeEndpoint",
    "ForwarderApi",
    "ForwarderProcess",
    "GlobusAuthStandIn",
    "postgres_for_tests",
]

POSTGRES_URL_ENV = "TASKFABRIC_TEST_POSTGRES_URL"
_PG_BIN = Path("/usr/lib/postgresql/15/bin")


# --- the forwarder as a process -----------------------------------------------------------


class ForwarderProcess:
    """`taskfabric forwarder serve` in a subprocess. Use as a context manager."""

    def __init__(
        self,
        directory: Path,
        settings: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 60.0,
        ca_file: Path | None = None,
    ) -> None:
        """`ca_file`: the CA that signed the forwarder's certificate when it serves HTTPS."""
        self.directory = Path(directory)
        self.ca_file = ca_file
        self.settings = {"port": 0, **settings}
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self.log_file = self.directory / "forwarder.log"
        self.config_file = self.directory / "forwarder.yaml"
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> ForwarderProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(dict(self.settings)))
        env = {**os.environ, "TASKFABRIC_HOME": str(self.directory / "home"), **self.env}
        command = [
            _taskfabric_command(),
            "--log-level",
            "INFO",
            "forwarder",
            "serve",
            "--config",
            str(self.config_file),
        ]
        with open(self.log_file, "ab") as log_handle:
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log_handle, env=env, text=True, start_new_session=True
            )
        self.url = self._read_url()
        wait_until(self._answers, timeout_s=self.start_timeout_s, interval_s=0.05, what="the forwarder to answer")
        return self

    def _read_url(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        found: list[str] = []

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            line = self._process.stdout.readline()
            found.append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        if not found or not any(scheme in found[0] for scheme in ("http://", "https://")):
            raise TaskfabricError(f"the forwarder did not start; see {self.log_file}:\n{self.log_tail()}")
        return found[0].split()[-1]

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise TaskfabricError(f"the forwarder exited with {self._process.returncode}:\n{self.log_tail()}")
        try:
            verify = client_ssl_context(self.ca_file) if self.ca_file is not None else True
            return httpx.get(f"{self.url}/v1/version", timeout=2.0, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, *, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def __enter__(self) -> ForwarderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _taskfabric_command() -> str:
    script = Path(sys.executable).parent / "taskfabric"
    if script.exists():
        return str(script)
    found = shutil.which("taskfabric")
    if found is None:
        raise TaskfabricError("the `taskfabric` command is not installed (pip install -e .)")
    return found


# --- PostgreSQL ---------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_for_tests(directory: Path | None = None) -> Iterator[str]:
    """A PostgreSQL database URL for the duration (see the module docstring)."""
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield configured
        return
    problems: list[str] = []
    for server in (
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        "postgresql+psycopg://root@127.0.0.1:5432/postgres",
    ):
        try:
            with _throwaway_database(server) as url:
                yield url
            return
        except _Unavailable as exc:
            problems.append(str(exc))
    with contextlib.ExitStack() as stack:
        folder = directory or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskfabric-pg-")))
        try:
            cluster = stack.enter_context(_private_cluster(folder))
        except _Unavailable as exc:
            problems.append(str(exc))
            raise StoreError(
                "no PostgreSQL for the tests: " + "; ".join(problems) + f". Set {POSTGRES_URL_ENV}, run a server "
                "on 127.0.0.1:5432 with trust auth, or install postgresql (apt-get install -y postgresql)."
            ) from None
        with _throwaway_database(cluster) as url:
            yield url


class _Unavailable(Exception):
    pass


@contextlib.contextmanager
def _throwaway_database(server_url: str) -> Iterator[str]:
    import psycopg

    parts = urllib.parse.urlsplit(server_url)
    dsn = urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, ""))
    name = f"tf_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise _Unavailable(f"{parts.hostname}:{parts.port}: {str(exc).strip().splitlines()[0]}") from None
    try:
        yield urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _private_cluster(directory: Path) -> Iterator[str]:
    """initdb + pg_ctl in `directory` (as the `postgres` user when we are root: initdb refuses root)."""
    if not (_PG_BIN / "initdb").exists():
        raise _Unavailable(f"no {_PG_BIN / 'initdb'}")
    data = directory / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise _Unavailable("running as root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "postgres")
    port = free_port()
    run = [*as_user, str(_PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _Unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [
        *as_user,
        str(_PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(directory / "pg.log"),
        "-w",
        "start",
    ]
    done = subprocess.run(start, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise _Unavailable(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(_PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )


# --- Globus Auth stand-in -----------------------------------------------------------------


class GlobusAuthStandIn:
    """A loopback Globus Auth answering token introspection for the tokens it was given.

    `add_token(token, sub=..., username=..., exp=...)` makes a token active; any other token is
    inactive (`{"active": false}`); a wrong client id/secret gets 401, as from Globus Auth."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stand_in._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="globus-auth-stand-in", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def add_token(
        self, token: str, *, sub: uuid.UUID, username: str, exp: float | None = None, scope: str = ""
    ) -> None:
        now = int(time.time())
        claims = {
            "active": True,
            "scope": scope,
            "client_id": self.client_id,
            "sub": str(sub),
            "username": username,
            "email": username,
            "exp": int(exp if exp is not None else now + 3600),
            "iat": now,
            "nbf": now,
            "aud": [self.client_id],
            "iss": "https://auth.globus.org",
            "identity_set": [str(sub)],
        }
        with self._lock:
            self.tokens[token] = claims

    def revoke(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.calls += 1
        if request.path.rstrip("/") != "/v2/oauth2/token/introspect":
            self._reply(request, 404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            self._reply(request, 401, {"errors": [{"code": "UNAUTHORIZED", "detail": "invalid client credentials"}]})
            return
        if request.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
            self._reply(request, 400, {"errors": [{"code": "BAD_REQUEST"}]})
            return
        length = int(request.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(request.rfile.read(length).decode())
        token = (form.get("token") or [""])[0]
        with self._lock:
            claims = self.tokens.get(token)
        if claims is None or claims["exp"] <= time.time():
            self._reply(request, 200, {"active": False})
            return
        answer = dict(claims)
        if "identity_set" not in (form.get("include") or [""])[0].split(","):
            answer.pop("identity_set")
        self._reply(request, 200, answer)

    @staticmethod
    def _reply(request: http.server.BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def __enter__(self) -> GlobusAuthStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --- an endpoint's broker side ------------------------------------------------------------


class MemoryEndpointUsers:
    """The management API's endpoint users, in a dict (an `EndpointUsers` for unit tests, with
    an `AdminBrokerLink` on a `MemoryTransport`)."""

    def __init__(self) -> None:
        self.users: dict[str, str] = {}
        self.permissions: dict[str, EndpointPermissions] = {}
        self.closed_for: list[tuple[str, str]] = []

    def queue_states(self) -> dict[str, dict[str, Any]]:
        return {}

    def create_user(self, name: str, password: str) -> None:
        self.users[name] = password

    def set_permissions(self, user: str, permissions: EndpointPermissions) -> None:
        self.permissions[user] = permissions

    def close_connections_of(self, user: str, *, reason: str = "credentials revoked") -> int:
        self.closed_for.append((user, reason))
        return 1

    def delete_user(self, name: str) -> None:
        self.users.pop(name, None)
        self.permissions.pop(name, None)

    def close(self) -> None:
        pass


class FakeEndpoint:
    """The broker side of an endpoint agent, from a registration response's `broker` section."""

    def __init__(self, registration: Mapping[str, Any], *, auto_ack: bool = True) -> None:
        registered = parse(EndpointRegistered, registration)
        self.broker: BrokerAccess = registered.broker
        self.endpoint_id = registered.endpoint_id
        self.auto_ack = auto_ack
        self.transport = RabbitTransport(self.broker.amqp_url, connection_name="fake-endpoint")
        self.batches: list[TaskBatch] = []
        self.deliveries: list[Delivery] = []
        self.cancels: list[CancelTasks] = []
        self._lock = threading.Lock()

    @property
    def username(self) -> str:
        return self.broker.username

    def start(self) -> FakeEndpoint:
        self.transport.start()
        return self

    def close(self) -> None:
        self.transport.close()

    def consume_tasks(self, *, prefetch: int = 50) -> None:
        self.transport.consume(self.broker.task_queue, self._on_task, prefetch=prefetch)

    def consume_control(self) -> None:
        """Collect the `CancelTasks` arriving on the endpoint's control queue (in `cancels`)."""
        assert self.broker.control_queue is not None, "the forwarder sent no control queue"
        self.transport.consume(self.broker.control_queue, self._on_control, prefetch=10)

    def _on_control(self, delivery: Delivery) -> None:
        cancel = unpack(delivery.body)
        assert isinstance(cancel, CancelTasks)
        with self._lock:
            self.cancels.append(cancel)
        self.transport.ack(delivery)

    @property
    def cancelled_ids(self) -> list[uuid.UUID]:
        with self._lock:
            return [task_id for cancel in self.cancels for task_id in cancel.task_ids]

    def _on_task(self, delivery: Delivery) -> None:
        batch = unpack(delivery.body)
        assert isinstance(batch, TaskBatch)
        with self._lock:
            self.batches.append(batch)
            self.deliveries.append(delivery)
        if self.auto_ack:
            self.transport.ack(delivery)

    @property
    def task_ids(self) -> list[uuid.UUID]:
        with self._lock:
            return [task.task_id for batch in self.batches for task in batch.tasks]

    def publish_results(
        self, results: Sequence[Result], *, user_id: str | None = "", routing_key: str | None = None
    ) -> None:
        """Publish a result batch (as this endpoint's user unless `user_id` says otherwise) and
        wait for the broker's confirm."""
        self.publish_message(ResultBatch(results=list(results)), user_id=user_id, routing_key=routing_key)

    def publish_status(self, state: str = EndpointState.ONLINE, **fields: Any) -> None:
        status = EndpointStatus(
            endpoint_id=self.endpoint_id, sent_at=time.time(), state=state, heartbeat_period_s=5.0, **fields
        )
        self.publish_message(status)

    def publish_message(
        self,
        message: ResultBatch | TaskEvents | EndpointStatus,
        *,
        user_id: str | None = "",
        routing_key: str | None = None,
    ) -> None:
        self.transport.publish(
            OutgoingMessage(
                exchange=self.broker.results_exchange,
                routing_key=routing_key or self.broker.result_queue,
                body=pack(message),
                user_id=self.username if user_id == "" else user_id,
            )
        ).result(timeout=15)

    def __enter__(self) -> FakeEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a small HTTP client for tests --------------------------------------------------------


class ForwarderApi:
    """Calls of the forwarder's API as one user (tests of other components may use it too)."""

    def __init__(self, url: str, token: str, *, username: str = "") -> None:
        self.url = url
        self.token = token
        self.username = username
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def register_function(self, body: bytes, *, name: str = "f", python_version: str = "3.11.7") -> str:
        response = self.http.post(
            "/v1/functions",
            json={"name": name, "body": base64.b64encode(body).decode(), "python_version": python_version},
        )
        response.raise_for_status()
        return str(response.json()["function_id"])

    def register_endpoint(self, name: str, **fields: Any) -> dict[str, Any]:
        response = self.http.post("/v1/endpoints", json={"name": name, **fields})
        response.raise_for_status()
        registration: dict[str, Any] = response.json()
        return registration

    def submit(
        self,
        endpoint_id: str,
        function_id: str,
        payloads: Sequence[bytes],
        *,
        binary: bool = True,
        client_python: str = "3.11.7",
        task_group_id: str | None = None,
    ) -> list[str]:
        """Submit one batch (msgpack, or JSON with `binary=False`), in task group `task_group_id`
        if given; returns the task ids."""
        import msgpack

        tasks: list[dict[str, Any]] = [{"function_id": function_id, "payload": payload} for payload in payloads]
        extra = {"task_group_id": task_group_id} if task_group_id is not None else {}
        if binary:
            response = self.http.post(
                f"/v1/endpoints/{endpoint_id}/tasks",
                content=msgpack.packb({"tasks": tasks, "client_python": client_python, **extra}),
                headers={"Content-Type": "application/msgpack"},
            )
            response.raise_for_status()
            return list(msgpack.unpackb(response.content)["task_ids"])
        for task in tasks:
            task["payload"] = base64.b64encode(task["payload"]).decode()
        response = self.http.post(
            f"/v1/endpoints/{endpoint_id}/tasks", json={"tasks": tasks, "client_python": client_python, **extra}
        )
        response.raise_for_status()
        return list(response.json()["task_ids"])

    def list_tasks(self, **params: Any) -> dict[str, Any]:
        """One page of `GET /v1/tasks` (raises on an error status)."""
        response = self.http.get("/v1/tasks", params={key: value for key, value in params.items() if value is not None})
        response.raise_for_status()
        page: dict[str, Any] = response.json()
        return page

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/tasks/{task_id}")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info

    def tasks(self, task_ids: Sequence[str]) -> dict[str, Any]:
        response = self.http.post("/v1/tasks/batch", json={"task_ids": list(task_ids)})
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/endpoints/{endpoint_id}")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info

    def __enter__(self) -> ForwarderApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
