"""A large result through a real forwarder process (SQLite, default 64 KiB blob threshold): the
JSON routes and the raw route give the same bytes, the raw route's digest header matches, and the
raw route's refusals are typed (pending 409, another user's 404, a malformed id 4xx)."""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
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


def test_a_batch_answer_inlines_16_mib_of_large_results_and_names_the_rest(
    sqlite_forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    """24 results of 1 MiB kept as blobs: POST /v1/tasks/batch reads those that fit in its 16 MiB
    budget and names the others by size and sha256, so one request never holds 10,000 large
    results; the client's get_batch_result downloads those and returns every value."""
    from taskfabric.client import Client

    alice = users(sqlite_forwarder)
    registration = alice.register_endpoint("batch")
    function_id = alice.register_function(b"f-batch" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"%d" % i for i in range(24)])
    objects = {task_id: os.urandom(1024 * 1024) for task_id in task_ids}
    values = {task_id: pickle.dumps(obj, protocol=5) for task_id, obj in objects.items()}  # as a worker sends them
    endpoint = fake_endpoints(registration)
    for start in range(0, len(task_ids), 4):
        endpoint.publish_results(
            [
                Result(task_id=uuid.UUID(task_id), ok=True, value=values[task_id], worker_python="3.11.9", attempts=1)
                for task_id in task_ids[start : start + 4]
            ]
        )
    last = task_ids[-1]
    wait_until(lambda: alice.task(last)["status"] == "success", timeout_s=60, what="the results stored")

    answer = alice.tasks(task_ids)["tasks"]
    inline = {task_id for task_id, info in answer.items() if info["result"] is not None}
    named = {task_id for task_id, info in answer.items() if info["result"] is None}
    fitting = 16 * 1024 * 1024 // len(values[last])  # 15: each pickle is a little over 1 MiB
    assert (len(inline), len(named)) == (fitting, len(task_ids) - fitting)
    for task_id in inline:
        assert base64.b64decode(answer[task_id]["result"]) == values[task_id]
        assert answer[task_id]["result_sha256"] is None
    for task_id in named:
        assert answer[task_id]["status"] == "success"
        assert answer[task_id]["result_size"] == len(values[task_id])
        assert answer[task_id]["result_sha256"] == hashlib.sha256(values[task_id]).hexdigest()
    one = next(iter(named))
    assert base64.b64decode(alice.task(one)["result"]) == values[one]  # a single task is read whole

    with Client(url=sqlite_forwarder.url, token=alice.token) as client:
        summaries = client.get_batch_result(task_ids)
    assert {str(task_id): summary["result"] for task_id, summary in summaries.items()} == objects
