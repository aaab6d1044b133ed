"""The Globus-Compute-compatible API without a broker: its shapes (checked against
globus-compute-common's own decoder), the parsing of hostile bodies, the worker's codec, the OAuth2
token route and the routes' access model (in-process app, SQLite store, in-memory broker)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from globus_compute_common import messagepack
from globus_compute_sdk.serialize import ComputeSerializer
from globus_compute_sdk.serialize.utils import pack_buffers

from taskfabric.errors import ErrorCode, InvalidRequest, PayloadTooLarge, ServiceError
from taskfabric.forwarder.admin import create_token, create_user
from taskfabric.forwarder.app import create_app
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.globus_compute.bodies import parse_function_registration, parse_submit
from taskfabric.forwarder.requests import SubmitLimits
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.testing import MemoryEndpointUsers
from taskfabric.manager import globus_compute as worker_codec
from taskfabric.manager.execution import TaskRunner
from taskfabric.protocol import FunctionBody, Task
from taskfabric.protocol.globus_compute import (
    COMPUTE_RESOURCE_SERVER,
    GLOBUS_COMPUTE_BODY_PREFIX,
    ComputeOutcome,
    compute_result_message,
    task_status_body,
)
from taskfabric.transport import MemoryBroker, MemoryTransport

pytestmark = pytest.mark.timeout(60)
LIMITS = SubmitLimits(max_tasks=10, max_payload_bytes=1000)


# --- shapes -------------------------------------------------------------------------------


def test_result_messages_decode_with_globus_compute_common() -> None:
    task_id = uuid.uuid4()
    ok = messagepack.unpack(compute_result_message(ComputeOutcome(task_id=task_id, ok=True, data="00\nabc")))
    assert isinstance(ok, messagepack.message_types.Result)
    assert ok.task_id == task_id and ok.data == "00\nabc" and not ok.is_error
    failed = messagepack.unpack(
        compute_result_message(ComputeOutcome(task_id=task_id, ok=False, data="Traceback: boom", error_code="X"))
    )
    assert failed.is_error and failed.error_details.code == "X" and failed.data == "Traceback: boom"


def test_task_status_bodies_are_what_the_sdk_reads() -> None:
    task_id = uuid.uuid4()
    assert task_status_body(task_id, "waiting-for-ep", None) == {"task_id": str(task_id), "status": "waiting-for-ep"}
    done = task_status_body(task_id, "failed", ComputeOutcome(task_id=task_id, ok=False, data="tb", completed_at=2.0))
    assert done["exception"] == "tb" and done["completion_t"] == "2.0" and "result" not in done


# --- hostile bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "tasks"),
        ({"tasks": []}, "tasks"),
        ({"tasks": {"not-a-uuid": ["x"]}}, "tasks"),
        ({"tasks": {str(uuid.uuid4()): "x"}}, "tasks["),
        ({"tasks": {str(uuid.uuid4()): [1]}}, "tasks["),
        ({"tasks": {str(uuid.uuid4()): ["x"]}, "task_group_id": "nope"}, "task_group_id"),
        ({"tasks": {str(uuid.uuid4()): ["x"]}, "create_queue": "yes"}, "create_queue"),
        ({"tasks": {str(uuid.uuid4()): ["x"]}, "user_endpoint_config": {"a": 1}}, "user_endpoint_config"),
        ({"tasks": {str(uuid.uuid4()): ["x"]}, "resource_specification": {"num_nodes": -1}}, "num_nodes"),
        ({"tasks": {str(uuid.uuid4()): ["x"] * 11}}, "limit of 10"),
    ],
)
def test_bad_submit_bodies_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest, match=field.replace("[", r"\[")):
        parse_submit(body, LIMITS)


def test_a_submit_keeps_the_sdks_order_and_group() -> None:
    first, second, group = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    parsed = parse_submit(
        {"tasks": {str(first): ["a", "b"], str(second): ["c"]}, "task_group_id": str(group), "create_queue": True},
        LIMITS,
    )
    assert parsed.function_order == [first, first, second]
    assert [task.payload for task in parsed.request.tasks] == [b"a", b"b", b"c"]
    assert parsed.request.task_group_id == group and parsed.create_queue
    with pytest.raises(PayloadTooLarge, match="max_payload_bytes"):
        parse_submit({"tasks": {str(first): ["x" * 1001]}}, LIMITS)


def test_function_registrations_are_marked_and_checked() -> None:
    parsed = parse_function_registration(
        {"function_name": "f", "function_code": "5\n01\nabc", "meta": {"python_version": "3.11.7"}},
        max_function_bytes=100,
    )
    assert parsed.body == GLOBUS_COMPUTE_BODY_PREFIX + b"5\n01\nabc" and parsed.python_version == "3.11.7"
    for body, field in (
        ({"function_name": "f"}, "function_code"),
        ({"function_name": "f", "function_code": "x", "group": str(uuid.uuid4())}, "group"),
        ({"function_name": "f", "function_code": "x", "meta": {"python_version": "3.11; rm"}}, "python_version"),
        ({"function_name": "f", "function_code": "x", "public": "yes"}, "public"),
    ):
        with pytest.raises(InvalidRequest, match=field):
            parse_function_registration(body, max_function_bytes=100)
    with pytest.raises(PayloadTooLarge):
        parse_function_registration({"function_name": "f", "function_code": "x" * 101}, max_function_bytes=100)


# --- the worker ---------------------------------------------------------------------------


def _divide(a: int, b: int) -> float:
    return a / b


def _compute_task(*args: Any) -> tuple[FunctionBody, Task]:
    serializer = ComputeSerializer()
    function_id = uuid.uuid4()
    code = pack_buffers([serializer.serialize(_divide)])
    payload = pack_buffers([serializer.serialize(args), serializer.serialize({})])
    body = FunctionBody(function_id=function_id, body=GLOBUS_COMPUTE_BODY_PREFIX + code.encode())
    return body, Task(task_id=uuid.uuid4(), function_id=function_id, payload=payload.encode())


def test_workers_run_compute_tasks_with_the_sdks_serializer() -> None:
    runner = TaskRunner(max_result_bytes=1 << 20)
    body, task = _compute_task(6, 3)
    runner.add_functions([body])
    result = runner.run(task)
    assert result.ok and result.value is not None
    assert ComputeSerializer().deserialize(result.value.decode()) == 2.0
    body, task = _compute_task(1, 0)
    runner.add_functions([body])
    failed = runner.run(task)
    assert not failed.ok and failed.error is not None
    assert "ZeroDivisionError" in failed.error.traceback and "_divide" in failed.error.traceback


def test_a_worker_without_the_sdk_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_sdk(name: str, *args: Any) -> Any:
        if name.startswith("globus_compute_sdk"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(worker_codec.importlib, "import_module", without_sdk)
    runner = TaskRunner(max_result_bytes=1 << 20)
    body, task = _compute_task(1, 1)
    runner.add_functions([body])
    result = runner.run(task)
    assert not result.ok and result.error is not None
    assert result.error.code == ErrorCode.PAYLOAD_FORMAT_UNSUPPORTED
    assert "taskfabric[globus-compute]" in result.error.message and "globus-compute-sdk" in result.error.message


# --- the app: OAuth2 and the access model -------------------------------------------------


@contextlib.asynccontextmanager
async def _app(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    settings = ForwarderSettings.from_mapping(
        {
            "database_url": f"sqlite:///{tmp_path / 'store.db'}",
            "topology_prefix": "unit",
            "queue_check_period_s": 0,
            "globus_compute": {"enabled": True},
        },
        source="test",
    )
    users = {name: create_user(settings, name) for name in ("alice", "bob")}
    tokens = {name: create_token(settings, name) for name in users}
    memory, management = MemoryBroker(), MemoryEndpointUsers()
    link = AdminBrokerLink(settings, transport=MemoryTransport(memory, username="forwarder"), management=management)
    application = create_app(settings, broker=link)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:5000") as http:
            yield {
                "http": http,
                "users": users,
                "tokens": tokens,
                "memory": memory,
                "management": management,
                "forwarder": application.state.forwarder,
            }


def _in_app(tmp_path: Path, scenario: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    async def run() -> None:
        async with _app(tmp_path) as app:
            await scenario(app)

    asyncio.run(run())


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_the_token_route_trades_client_credentials_for_one_compute_token(tmp_path: Path) -> None:
    _in_app(tmp_path, _the_token_route_trades_client_credentials_for_one_compute_token)


async def _the_token_route_trades_client_credentials_for_one_compute_token(app: dict[str, Any]) -> None:
    http, alice, token = app["http"], app["users"]["alice"], app["tokens"]["alice"]
    form = {"grant_type": "client_credentials", "scope": "https://auth.globus.org/scopes/x/all"}
    answer = await http.post("/v2/oauth2/token", data=form, headers=_basic(str(alice.user_id), token))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["resource_server"] == COMPUTE_RESOURCE_SERVER and body["other_tokens"] == []
    assert body["access_token"] == token and body["token_type"] == "Bearer"
    bob = app["users"]["bob"]
    for headers, data, status, error in (
        (_basic(str(bob.user_id), token), form, 401, "invalid_client"),  # alice's token, bob's id
        (_basic("not-a-uuid", token), form, 401, "invalid_client"),
        (_basic(str(alice.user_id), "wrong"), form, 401, "invalid_client"),
        ({}, form, 401, "invalid_client"),
        (_basic(str(alice.user_id), token), {"grant_type": "password"}, 400, "unsupported_grant_type"),
    ):
        refused = await http.post("/v2/oauth2/token", data=data, headers=headers)
        assert refused.status_code == status and refused.json()["error"] == error, refused.text

    async def unavailable(token: str, *, peer: str = "") -> None:
        raise ServiceError("the identity provider did not answer", status=503)

    app["forwarder"].authenticate = unavailable  # an outage is not a wrong secret
    down = await http.post("/v2/oauth2/token", data=form, headers=_basic(str(alice.user_id), "not-cached"))
    assert down.status_code == 503 and down.json()["error"] == "temporarily_unavailable", down.text


async def _register_endpoint(http: httpx.AsyncClient, token: str) -> str:
    answer = await http.post("/v1/endpoints", json={"name": "ep"}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["endpoint_id"])


def test_compute_routes_follow_the_access_model(tmp_path: Path) -> None:
    _in_app(tmp_path, _compute_routes_follow_the_access_model)


async def _compute_routes_follow_the_access_model(app: dict[str, Any]) -> None:
    http = app["http"]
    alice = {"Authorization": f"Bearer {app['tokens']['alice']}"}
    bob = {"Authorization": f"Bearer {app['tokens']['bob']}"}
    assert (await http.get("/v2/version")).json()["min_sdk_version"]
    assert (await http.get("/v2/endpoints")).status_code == 401  # a token is needed
    endpoint_id = await _register_endpoint(http, app["tokens"]["alice"])
    registered = await http.post(
        "/v3/functions", json={"function_name": "f", "function_code": "5\n01\nabc"}, headers=alice
    )
    function_id = registered.json()["function_uuid"]
    group = str(uuid.uuid4())
    submit = {"tasks": {function_id: ["p1", "p2"]}, "task_group_id": group, "create_queue": True}
    accepted = await http.post(f"/v3/endpoints/{endpoint_id}/submit", json=submit, headers=alice)
    assert accepted.status_code == 200, accepted.text
    task_ids = accepted.json()["tasks"][function_id]
    assert len(task_ids) == 2 and accepted.json()["task_group_id"] == group
    assert (await http.get(f"/v2/tasks/{task_ids[0]}", headers=alice)).json()["status"] == "waiting-for-ep"
    assert [task["id"] for task in (await http.get(f"/v2/taskgroup/{group}", headers=alice)).json()["tasks"]]
    assert (await http.get(f"/v2/functions/{function_id}", headers=alice)).json()["function_code"] == "5\n01\nabc"

    # bob sees none of it, and may not use alice's endpoint, function or task group
    assert (await http.get(f"/v2/tasks/{task_ids[0]}", headers=bob)).status_code == 404
    statuses = (await http.post("/v2/batch_status", json={"task_ids": task_ids}, headers=bob)).json()["results"]
    assert {status["status"] for status in statuses.values()} == {"unknown"}
    assert (await http.get(f"/v2/taskgroup/{group}", headers=bob)).status_code == 404
    assert (await http.get(f"/v2/functions/{function_id}", headers=bob)).status_code == 404
    assert (await http.get(f"/v2/endpoints/{endpoint_id}/status", headers=bob)).status_code in (403, 404)  # as /v1
    own = await _register_endpoint(http, app["tokens"]["bob"])
    foreign_function = {"tasks": {function_id: ["p"]}}
    assert (await http.post(f"/v3/endpoints/{own}/submit", json=foreign_function, headers=bob)).status_code == 404
    bob_function = (
        await http.post("/v3/functions", json={"function_name": "g", "function_code": "5\n01\nxyz"}, headers=bob)
    ).json()["function_uuid"]
    to_alice = {"tasks": {bob_function: ["p"]}}
    assert (await http.post(f"/v3/endpoints/{endpoint_id}/submit", json=to_alice, headers=bob)).status_code == 403
    into_group = {"tasks": {bob_function: ["p"]}, "task_group_id": group, "create_queue": True}
    assert (await http.post(f"/v3/endpoints/{own}/submit", json=into_group, headers=bob)).status_code == 403

    # shared with bob (submit role, a grant limit): he may submit there, sees what /v1 shows a submitter
    grant = {"public": False, "grants": [{"user": "bob", "role": "submit", "max_waiting_tasks": 1}]}
    assert (await http.put(f"/v1/endpoints/{endpoint_id}/access", json=grant, headers=alice)).status_code == 200
    status = (await http.get(f"/v2/endpoints/{endpoint_id}/status", headers=bob)).json()
    assert status["details"]["role"] == "submit" and "hostname" not in status["details"]
    assert (await http.post(f"/v3/endpoints/{endpoint_id}/submit", json=to_alice, headers=bob)).status_code == 200
    over = await http.post(f"/v3/endpoints/{endpoint_id}/submit", json=to_alice, headers=bob)
    assert over.status_code == 429, over.text  # the grant's max_waiting_tasks, as on /v1

    # hostile input is a typed 4xx, never a 500
    deep = "[" * 100_000  # json.loads: RecursionError
    for path, body in (
        ("/v3/functions", "not json"),
        (f"/v3/endpoints/{endpoint_id}/submit", "[1]"),
        ("/v3/functions", deep),
        (f"/v3/endpoints/{endpoint_id}/submit", deep),
        ("/v2/batch_status", deep),
    ):
        refused = await http.post(path, content=body, headers={**alice, "Content-Type": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_REQUEST", refused.text
    assert (await http.get("/v2/tasks/not-a-uuid", headers=alice)).status_code in (400, 422)
    assert (await http.post("/v3/endpoints", json={}, headers=alice)).json()["error"]["code"] == "NOT_SUPPORTED"


def test_result_credentials_read_only_the_users_own_queues(tmp_path: Path) -> None:
    _in_app(tmp_path, _result_credentials_read_only_the_users_own_queues)


async def _result_credentials_read_only_the_users_own_queues(app: dict[str, Any]) -> None:
    http, alice = app["http"], app["users"]["alice"]
    headers = {"Authorization": f"Bearer {app['tokens']['alice']}"}
    answer = (await http.get("/v2/get_amqp_result_connection_url", headers=headers)).json()
    assert answer["queue_prefix"] == f"unit.gc.{alice.user_id}."
    username = f"gc-{alice.user_id}"
    assert f"{username}:" in answer["connection_url"]
    permissions = app["management"].permissions[username]
    assert permissions.configure == "^$" and permissions.write == "^$"
    assert permissions.read == "^" + answer["queue_prefix"].replace(".", r"\.").replace("-", r"\-")
    endpoint_id = await _register_endpoint(http, app["tokens"]["alice"])
    function_id = (
        await http.post("/v3/functions", json={"function_name": "f", "function_code": "1\na"}, headers=headers)
    ).json()["function_uuid"]
    group = str(uuid.uuid4())
    submit = {"tasks": {function_id: ["p"]}, "task_group_id": group, "create_queue": True}
    assert (await http.post(f"/v3/endpoints/{endpoint_id}/submit", json=submit, headers=headers)).status_code == 200
    assert answer["queue_prefix"] + group in app["memory"].queues
    assert json.loads(json.dumps(answer))  # plain JSON


# --- taskfabric globus-compute proxy ------------------------------------------------------


def test_the_proxy_relays_to_an_https_service_and_verifies_it(tmp_path: Path) -> None:
    from taskfabric.broker_config.certs import make_ca, make_server_certificate
    from taskfabric.client.cli_globus_compute import serve_proxy
    from taskfabric.errors import ConfigError
    from taskfabric.processes import free_port

    ca = make_ca(tmp_path)
    server_cert = make_server_certificate(ca, tmp_path, hostnames=["localhost", "127.0.0.1"])
    other_ca = make_ca(tmp_path / "other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert.cert_file, server_cert.key_file)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.readexactly(5))
        await writer.drain()
        writer.close()

    async def through(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    async def scenario() -> None:
        service = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
        url = f"https://localhost:{service.sockets[0].getsockname()[1]}"
        trusted, untrusted = free_port(), free_port()
        ready = [asyncio.Event(), asyncio.Event()]
        proxies = [
            asyncio.create_task(serve_proxy(url, port=trusted, ca_file=str(ca.cert_file), ready=ready[0])),
            asyncio.create_task(serve_proxy(url, port=untrusted, ca_file=str(other_ca.cert_file), ready=ready[1])),
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready)), 10)
        assert await through(trusted) == b"echo:hello"
        assert await through(untrusted) == b""  # the service's certificate was refused: nothing relayed
        with pytest.raises(ConfigError, match=f"127.0.0.1:{trusted}"):
            await serve_proxy(url, port=trusted)  # the port is taken
        for proxy in proxies:
            proxy.cancel()
        service.close()

    asyncio.run(scenario())
