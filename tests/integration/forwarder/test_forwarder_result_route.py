"""A large result through a real forwarder process (SQLite, default 64 KiB blob threshold): the
JSON routes and the raw route give the same bytes, the raw route's digest header matches, and the
raw route's refusals are typed (pending 409, another user's 404, a malformed id 4xx)."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from taskfabric.forwarder.store.schema import tasks
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result
from taskfabric.protocol.api import RESULT_NOT_AVAILABLE, RESULT_SHA256_HEADER, RESULT_WORKER_PYTHON_HEADER
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def test_a_large_result_reads_the_same_on_every_route(
    sqlite_forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, mallory = users(sqlite_forwarder), users(sqlite_forwarder)
    registration = alice.register_endpoint("blobs")
    endpoint_id = registration["endpoint_id"]
    function_id = alice.register_function(b"f-body" + uuid.uuid4().bytes)
    big_id, small_id, pending_id = alice.submit(endpoint_id, function_id, [b"a", b"b", b"c"])
    big, small = os.urandom(200 * 1024 + 5), b"small result"
    endpoint = fake_endpoints(registration)
    endpoint.publish_results(
        [
            Result(task_id=uuid.UUID(task_id), ok=True, value=value, worker_python="3.11.9", attempts=1)
            for task_id, value in ((big_id, big), (small_id, small))
        ]
    )
    wait_until(lambda: alice.task(big_id)["status"] == "success", timeout_s=15, what="the large result stored")
    with sqlite_forwarder.store() as store, store.engine.connect() as connection:
        query = select(tasks.c.task_id, tasks.c.result_blob).where(
            tasks.c.task_id.in_([uuid.UUID(big_id), uuid.UUID(small_id)])
        )
        blobs = {str(row.task_id): row.result_blob for row in connection.execute(query)}
    assert blobs[big_id] is not None and blobs[small_id] is None  # only the large one is a blob

    for task_id, value in ((big_id, big), (small_id, small)):
        assert base64.b64decode(alice.task(task_id)["result"]) == value
        assert base64.b64decode(alice.tasks([task_id])["tasks"][task_id]["result"]) == value
        raw = alice.http.get(f"/v1/tasks/{task_id}/result")
        assert raw.status_code == 200 and raw.content == value
        assert raw.headers["content-type"] == "application/octet-stream"
        assert raw.headers[RESULT_SHA256_HEADER] == hashlib.sha256(value).hexdigest()
        assert raw.headers[RESULT_WORKER_PYTHON_HEADER] == "3.11.9"

    pending = alice.http.get(f"/v1/tasks/{pending_id}/result")
    assert pending.status_code == 409 and pending.json()["error"]["code"] == RESULT_NOT_AVAILABLE
    assert pending_id in pending.json()["error"]["message"]
    assert mallory.http.get(f"/v1/tasks/{big_id}/result").status_code == 404
    malformed = alice.http.get("/v1/tasks/not-a-uuid/result")
    assert 400 <= malformed.status_code < 500 and "error" in malformed.json()
