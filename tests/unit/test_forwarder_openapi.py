"""Every route's real responses conform to the forwarder's own OpenAPI document.

The app runs in-process (httpx over ASGI, its lifespan started) on a SQLite store and an
`AdminBrokerLink` over a `MemoryTransport`; a stand-in endpoint publishes results on the memory
broker so that task infos in every state are checked. Each response is validated by schemathesis'
response-conformance check (status code documented, content type, body against the schema), and
the test fails if a documented operation was not exercised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import schemathesis

from taskfabric.broker_config import broker_username
from taskfabric.forwarder.admin import create_token, create_user
from taskfabric.forwarder.app import create_app
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.result_uploads import GrantClaims, ResultUploadSigner
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.testing import MemoryEndpointUsers
from taskfabric.protocol import (
    EndpointRegistered,
    Result,
    ResultBatch,
    TaskError,
    TaskStatus,
    pack,
    parse,
)
from taskfabric.protocol.result_uploads import RESULT_GRANT_HEADER
from taskfabric.transport import MemoryBroker, MemoryTransport, OutgoingMessage

pytestmark = pytest.mark.timeout(60)


class Conformance:
    """Sends requests to the app and validates each response against the OpenAPI document."""

    def __init__(self, http: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.http = http
        self.schema = schemathesis.openapi.from_dict(document)
        self.documented = {
            (method.upper(), path)
            for path, operations in document["paths"].items()
            for method in operations
            if method in ("get", "post", "put", "patch", "delete")
        }
        self.exercised: set[tuple[str, str]] = set()

    async def call(self, method: str, template: str, *, expect: int, **kwargs: Any) -> httpx.Response:
        path = template.format(**kwargs.pop("ids", {}))
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:300]}"
        self.schema[template][method].validate_response(response)
        self.exercised.add((method, template))
        return response


@contextlib.asynccontextmanager
async def running_app(tmp_path: Path) -> AsyncIterator[tuple[Conformance, str, MemoryBroker]]:
    settings = ForwarderSettings(
        database_url=f"sqlite:///{tmp_path / 'store.db'}", topology_prefix="unit", queue_check_period_s=0
    )
    create_user(settings, "alice")
    create_user(settings, "bob")  # a group member (_exercise_groups)
    token = create_token(settings, "alice")
    memory = MemoryBroker()
    link = AdminBrokerLink(
        settings, transport=MemoryTransport(memory, username="forwarder"), management=MemoryEndpointUsers()
    )
    app = create_app(settings, broker=link)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://forwarder", headers=headers) as http:
            yield Conformance(http, app.openapi()), token, memory


def _publish_results(memory: MemoryBroker, registered: EndpointRegistered, results: list[Result]) -> None:
    """What the endpoint's agent does: a result batch on its result queue, as its own user."""
    endpoint = MemoryTransport(memory, username=broker_username(registered.endpoint_id))
    endpoint.start()
    try:
        message = OutgoingMessage(
            exchange=registered.broker.results_exchange,
            routing_key=registered.broker.result_queue,
            body=pack(ResultBatch(results=results)),
            user_id=endpoint.username,
        )
        endpoint.publish(message).result(5)
    finally:
        endpoint.close()


async def _wait_finished(api: Conformance, task_ids: list[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = await api.http.post("/v1/tasks/batch", json={"task_ids": task_ids})
        if all(info["status"] != TaskStatus.WAITING for info in response.json()["tasks"].values()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the results were not ingested")


async def _exercise(api: Conformance, memory: MemoryBroker) -> None:
    await api.call("GET", "/v1/version", expect=200)
    await api.call("GET", "/v1/whoami", expect=200)

    body = {"name": "f", "body": base64.b64encode(b"function bytes").decode(), "python_version": "3.11.7"}
    function_id = (await api.call("POST", "/v1/functions", json=body, expect=201)).json()["function_id"]
    await api.call("POST", "/v1/functions", json=body, expect=200)
    await api.call("GET", "/v1/functions", expect=200)
    fn = {"function_id": function_id}
    await api.call("GET", "/v1/functions/{function_id}", ids=fn, params={"include_body": "true"}, expect=200)
    await api.call("GET", "/v1/functions/{function_id}", ids={"function_id": str(uuid.uuid4())}, expect=404)

    answer = await api.call("POST", "/v1/endpoints", json={"name": "ep", "metadata": {"display_name": "E"}}, expect=201)
    registered = parse(EndpointRegistered, answer.json())
    ep = {"endpoint_id": str(registered.endpoint_id)}
    await api.call("POST", "/v1/endpoints", json={"name": "ep", "endpoint_id": ep["endpoint_id"]}, expect=200)
    await api.call("POST", "/v1/endpoints", json={"name": "bad name!"}, expect=422)
    await api.call("GET", "/v1/endpoints", expect=200)
    await api.call("GET", "/v1/endpoints/{endpoint_id}", ids=ep, expect=200)
    await api.call("GET", "/v1/endpoints/{endpoint_id}/status", ids=ep, expect=200)

    tasks = {"tasks": [{"function_id": function_id, "payload": base64.b64encode(b"args").decode()}] * 3}
    submitted = await api.call("POST", "/v1/endpoints/{endpoint_id}/tasks", ids=ep, json=tasks, expect=201)
    task_ids = submitted.json()["task_ids"]
    binary = {"tasks": [{"function_id": function_id, "payload": b"args"}]}
    await api.call(
        "POST",
        "/v1/endpoints/{endpoint_id}/tasks",
        ids=ep,
        content=msgpack.packb(binary, use_bin_type=True),
        headers={"Content-Type": "application/msgpack"},
        expect=201,
    )
    await api.call("GET", "/v1/tasks/{task_id}", ids={"task_id": task_ids[0]}, expect=200)  # waiting
    failure = TaskError(code="TASK_FAILED", message="boom", traceback="Traceback ...", exception=b"pickled")
    _publish_results(
        memory,
        registered,
        [
            Result(task_id=uuid.UUID(task_ids[0]), ok=True, value=b"value", worker_python="3.11.7"),
            Result(task_id=uuid.UUID(task_ids[1]), ok=False, error=failure, stdout="out", stderr="err"),
        ],
    )
    await _wait_finished(api, task_ids[:2])
    for task_id in task_ids:
        await api.call("GET", "/v1/tasks/{task_id}", ids={"task_id": task_id}, expect=200)
    await api.call("GET", "/v1/tasks/{task_id}", ids={"task_id": str(uuid.uuid4())}, expect=404)
    raw = await api.call("GET", "/v1/tasks/{task_id}/result", ids={"task_id": task_ids[0]}, expect=200)
    assert raw.content == b"value"
    await api.call("GET", "/v1/tasks/{task_id}/result", ids={"task_id": task_ids[1]}, expect=409)  # failed
    await api.call("GET", "/v1/tasks/{task_id}/result", ids={"task_id": str(uuid.uuid4())}, expect=404)
    await _exercise_data(api)
    await api.call("POST", "/v1/tasks/batch", json={"task_ids": [*task_ids, "not-an-id"]}, expect=200)
    await api.call("POST", "/v1/tasks/cancel", json={"task_ids": task_ids}, expect=200)
    await api.call("GET", "/v1/tasks", params={"limit": "2"}, expect=200)
    await api.call("GET", "/v1/tasks", params={"status": TaskStatus.CANCELLED.value}, expect=200)
    activity = await api.call("GET", "/v1/activity", params={"window_s": "60", "failures": "5"}, expect=200)
    assert activity.json()["recent_failures"][0]["task_id"] == task_ids[1]
    await api.call("GET", "/v1/activity", params={"window_s": "0"}, expect=400)

    # endpoint sharing (issue 13)
    await api.call("GET", "/v1/endpoints/{endpoint_id}/access", ids=ep, expect=200)
    public = {"public": True, "grants": []}
    await api.call("PUT", "/v1/endpoints/{endpoint_id}/access", ids=ep, json=public, expect=200)
    nobody = {"grants": [{"user": "nobody-" + uuid.uuid4().hex, "role": "submit"}]}
    await api.call("PUT", "/v1/endpoints/{endpoint_id}/access", ids=ep, json=nobody, expect=404)
    await api.call("PUT", "/v1/endpoints/{endpoint_id}/access", ids=ep, json={"grants": [{}]}, expect=400)
    await api.call("GET", "/v1/endpoints/{endpoint_id}/audit", ids=ep, params={"limit": "10"}, expect=200)
    await api.call("GET", "/v1/endpoints/{endpoint_id}/audit", ids=ep, params={"limit": "0"}, expect=400)
    everyone = {"endpoint_id": ep["endpoint_id"], "all_users": "true"}
    await api.call("GET", "/v1/tasks", params=everyone, expect=200)

    # function sharing and endpoint allow-lists (issue 13)
    await api.call("GET", "/v1/functions", params={"shared": "true"}, expect=200)
    await api.call("GET", "/v1/functions/{function_id}/access", ids=fn, expect=200)
    sharing = {"public": True, "grants": []}
    await api.call("PUT", "/v1/functions/{function_id}/access", ids=fn, json=sharing, expect=200)
    await api.call("PUT", "/v1/functions/{function_id}/access", ids=fn, json={"public": "x"}, expect=422)
    await api.call("GET", "/v1/endpoints/{endpoint_id}/allowed_functions", ids=ep, expect=200)
    allowed = {"allowed_functions": [function_id]}
    await api.call("PUT", "/v1/endpoints/{endpoint_id}/allowed_functions", ids=ep, json=allowed, expect=200)
    await api.call("GET", "/v1/endpoints/{endpoint_id}/allowed_functions", ids=ep, expect=200)

    await api.call("DELETE", "/v1/functions/{function_id}", ids=fn, expect=204)
    await api.call("DELETE", "/v1/endpoints/{endpoint_id}", ids=ep, expect=204)
    await api.call("GET", "/v1/endpoints/{endpoint_id}", ids=ep, expect=404)
    await _exercise_groups(api)


async def _exercise_data(api: Conformance) -> None:
    """Arguments by reference (issue 15): upload, read with the reference, typed refusals."""
    data = b"argument bytes"
    digest = {"sha256": hashlib.sha256(data).hexdigest()}
    uploaded = await api.call("PUT", "/v1/data/{sha256}", ids=digest, content=data, expect=200)
    reference = {"X-Taskfabric-Data-Ref": uploaded.json()["token"]}
    fetched = await api.call("GET", "/v1/data/{sha256}", ids=digest, headers=reference, expect=200)
    assert fetched.content == data
    await api.call("PUT", "/v1/data/{sha256}", ids={"sha256": "0" * 64}, content=data, expect=400)
    forged = {"X-Taskfabric-Data-Ref": "e30.AAAA"}
    await api.call("GET", "/v1/data/{sha256}", ids=digest, headers=forged, expect=403)


async def _exercise_result_upload(api: Conformance, key_file: Path) -> None:
    """A worker's result upload (issue 15): stored with a valid grant, 403 with a forged one."""
    task = {"task_id": str(uuid.uuid4())}
    grant = ResultUploadSigner(key_file.read_bytes()).grant(
        GrantClaims(task_id=uuid.UUID(task["task_id"]), max_bytes=1024, expires_at=time.time() + 60)
    )
    path = "/v1/tasks/{task_id}/result-blob"
    stored = await api.call("PUT", path, ids=task, content=b"result", headers={RESULT_GRANT_HEADER: grant}, expect=200)
    assert stored.json()["size"] == 6
    await api.call("PUT", path, ids=task, content=b"result", headers={RESULT_GRANT_HEADER: "e30.AAAA"}, expect=403)


async def _exercise_groups(api: Conformance) -> None:
    """Sharing: groups (issue 13)."""
    created = await api.call("POST", "/v1/groups", json={"name": "lab", "description": "my lab"}, expect=201)
    group = {"group_id": created.json()["group_id"]}
    await api.call("POST", "/v1/groups", json={"name": "lab"}, expect=409)
    await api.call("POST", "/v1/groups", json={"name": "not a name!"}, expect=400)
    await api.call("GET", "/v1/groups", expect=200)
    members = "/v1/groups/{group_id}/members"
    await api.call("POST", members, ids=group, json={"user": "bob"}, expect=201)
    await api.call("POST", members, ids=group, json={"user": "bob", "role": "manager"}, expect=200)
    await api.call("POST", members, ids=group, json={"user": "nobody-here"}, expect=404)
    await api.call("GET", "/v1/groups/{group_id}", ids=group, expect=200)
    await api.call("GET", "/v1/groups/{group_id}", ids={"group_id": str(uuid.uuid4())}, expect=404)
    await api.call("DELETE", "/v1/groups/{group_id}/members/{user}", ids={**group, "user": "bob"}, expect=204)
    await api.call("DELETE", "/v1/groups/{group_id}/members/{user}", ids={**group, "user": "alice"}, expect=403)
    await api.call("DELETE", "/v1/groups/{group_id}", ids=group, expect=204)


def test_every_route_answers_as_its_openapi_schema_says(tmp_path: Path) -> None:
    async def run() -> Conformance:
        async with running_app(tmp_path) as (api, _token, memory):
            await _exercise(api, memory)
            await _exercise_result_upload(api, tmp_path / "data-ref.key")
            async with httpx.AsyncClient(transport=api.http._transport, base_url="http://forwarder") as anonymous:
                response = await anonymous.get("/v1/whoami")
            assert response.status_code == 401
            api.schema["/v1/whoami"]["GET"].validate_response(response)
            return api

    api = asyncio.run(run())
    assert api.documented - api.exercised == set(), "operations no test call exercised"
