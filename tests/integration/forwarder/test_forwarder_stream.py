"""The WebSocket results stream of a real forwarder: live pushes, replays, unknown ids, once per
connection, and authentication of the handshake."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result, TaskError
from taskfabric.protocol.task_ids import submission_task_ids
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


class Stream:
    """A results stream connection with helpers to send and receive msgpack frames."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    def send(self, frame: dict[str, Any]) -> None:
        self.connection.send(msgpack.packb(frame))

    def receive(self) -> dict[str, Any]:
        frame: dict[str, Any] = msgpack.unpackb(self.connection.recv(timeout=15))
        return frame

    def results(self, count: int) -> dict[str, dict[str, Any]]:
        """Receive frames until `count` results arrived; fail on anything else."""
        found: dict[str, dict[str, Any]] = {}
        while len(found) < count:
            frame = self.receive()
            assert set(frame) == {"results"}, frame
            for result in frame["results"]:
                assert result["task_id"] not in found, "a result was sent twice"
                found[result["task_id"]] = result
        assert len(found) == count
        return found

    def ping(self, marker: object) -> None:
        """Round trip a ping; everything the server queued before it must have been received."""
        self.send({"ping": marker})
        assert self.receive() == {"pong": marker}


@pytest.fixture
def streams(forwarder: Any) -> Iterator[Callable[[ForwarderApi], Stream]]:
    with contextlib.ExitStack() as stack:

        def open_stream(api: ForwarderApi) -> Stream:
            url = forwarder.url.replace("http://", "ws://") + "/v1/results/ws"
            headers = {"Authorization": f"Bearer {api.token}"}
            return Stream(stack.enter_context(connect(url, additional_headers=headers, open_timeout=15)))

        yield open_stream


def _ok(task_id: str, value: bytes) -> Result:
    return Result(task_id=uuid.UUID(task_id), ok=True, value=value, worker_python="3.11.9")


def test_results_are_pushed_live_and_replayed(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, streams: Callable[[ForwarderApi], Stream]
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"%d" % i for i in range(6)])
    endpoint = fake_endpoints(registration)

    early = streams(alice)
    early.send({"subscribe": task_ids[:4]})
    early.ping("subscribed")  # nothing finished yet: nothing before the pong
    endpoint.publish_results([_ok(task_ids[0], b"zero"), _ok(task_ids[1], b"one")])
    endpoint.publish_results(
        [Result(task_id=uuid.UUID(task_ids[2]), ok=False, error=TaskError(code="WALLTIME_EXCEEDED", message="late"))]
    )
    pushed = early.results(3)
    assert pushed[task_ids[0]]["ok"] is True and pushed[task_ids[0]]["value"] == b"zero"
    assert pushed[task_ids[0]]["error"] is None
    assert pushed[task_ids[0]]["details"]["worker_python"] == "3.11.9"
    assert pushed[task_ids[2]]["ok"] is False and pushed[task_ids[2]]["value"] is None
    assert pushed[task_ids[2]]["error"]["code"] == "WALLTIME_EXCEEDED"

    # a later connection gets the finished ones at once, then the rest as they come
    late = streams(alice)
    late.send({"subscribe": task_ids})
    replayed = late.results(3)
    assert set(replayed) == set(task_ids[:3])
    assert replayed[task_ids[1]]["value"] == b"one"
    endpoint.publish_results([_ok(task_id, b"rest") for task_id in task_ids[3:]])
    assert set(late.results(3)) == set(task_ids[3:])
    assert set(early.results(1)) == {task_ids[3]}  # only what it subscribed to


def test_each_result_once_per_connection(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, streams: Callable[[ForwarderApi], Stream]
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    first, second, third = alice.submit(registration["endpoint_id"], function_id, [b"1", b"2", b"3"])
    endpoint = fake_endpoints(registration)
    stream = streams(alice)
    stream.send({"subscribe": [first, second, first]})
    endpoint.publish_results([_ok(first, b"v1")])
    assert set(stream.results(1)) == {first}
    # a duplicate report of `first`, then `second`: only `second` comes
    endpoint.publish_results([_ok(first, b"v1 again")])
    endpoint.publish_results([_ok(second, b"v2")])
    assert set(stream.results(1)) == {second}
    # subscribing again to what was sent sends nothing more
    stream.send({"subscribe": [first, second, third]})
    stream.ping("after re-subscribe")
    endpoint.publish_results([_ok(third, b"v3")])
    assert set(stream.results(1)) == {third}
    stream.ping("end")


def test_unknown_and_foreign_ids_are_named(
    forwarder: Any, users: Users, streams: Callable[[ForwarderApi], Stream]
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = bob.register_endpoint("bobs")
    function_id = bob.register_function(b"f" + uuid.uuid4().bytes)
    (bobs_task,) = bob.submit(registration["endpoint_id"], function_id, [b"secret"])
    missing = str(uuid.uuid4())
    stream = streams(alice)
    stream.send({"subscribe": [bobs_task, missing, "not-a-uuid", 42]})
    frame = stream.receive()
    assert set(frame) == {"unknown"}
    assert set(frame["unknown"]) == {bobs_task, missing, "not-a-uuid", "42"}
    stream.send({"hello": 1})
    assert stream.receive()["error"]["code"] == "INVALID_REQUEST"
    stream.connection.send(b"\xc1 not msgpack")
    assert stream.receive()["error"]["code"] == "INVALID_REQUEST"
    stream.ping({"still": "alive"})


def test_the_handshake_needs_a_valid_token(forwarder: Any, users: Users) -> None:
    url = forwarder.url.replace("http://", "ws://") + "/v1/results/ws"
    for headers in ({}, {"Authorization": "Bearer tf_wrong"}, {"Authorization": "Basic eDp5"}):
        with pytest.raises(InvalidStatus) as refused, connect(url, additional_headers=headers, open_timeout=15):
            pass
        assert refused.value.response.status_code == 401


def test_results_stored_by_another_replica_arrive_by_polling(
    forwarder: Any, users: Users, streams: Callable[[ForwarderApi], Stream]
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_id,) = alice.submit(registration["endpoint_id"], function_id, [b"x"])
    stream = streams(alice)
    stream.send({"subscribe": [task_id]})
    stream.ping("subscribed")
    # another forwarder replica stores the result: this one's hub never hears of it
    with forwarder.store() as store:
        stored = store.tasks.store_results(
            [(uuid.UUID(registration["endpoint_id"]), [_ok(task_id, b"from elsewhere")])], now=time.time()
        )
    assert len(stored) == 1
    assert stream.results(1)[task_id]["value"] == b"from elsewhere"


def _submit_with_key(
    api: ForwarderApi, endpoint_id: str, function_id: str, payloads: list[bytes], key: uuid.UUID
) -> list[str]:
    body = {
        "tasks": [{"function_id": function_id, "payload": payload} for payload in payloads],
        "client_python": "3.11.7",
        "submission_id": str(key),
    }
    response = api.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        content=msgpack.packb(body),
        headers={"Content-Type": "application/msgpack"},
    )
    response.raise_for_status()
    return [str(task_id) for task_id in msgpack.unpackb(response.content)["task_ids"]]


def test_expected_ids_of_a_submit_in_flight_get_their_results_without_a_subscription(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, streams: Callable[[ForwarderApi], Stream]
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    alice_id = uuid.UUID(alice.http.get("/v1/whoami").json()["user_id"])
    key = uuid.uuid4()
    expected = [str(task_id) for task_id in submission_task_ids(alice_id, key, 3)]

    stream, snoop = streams(alice), streams(bob)
    stream.send({"expect": expected})
    snoop.send({"expect": expected})  # another user naming alice's ids gets nothing of hers
    stream.ping("expected")  # not stored yet: neither a result nor "unknown"
    assert _submit_with_key(alice, registration["endpoint_id"], function_id, [b"1", b"2", b"3"], key) == expected

    endpoint = fake_endpoints(registration)
    endpoint.publish_results([_ok(task_id, b"v") for task_id in expected[:2]])
    assert set(stream.results(2)) == set(expected[:2]), "expected ids were not pushed"
    # the answer came: the subscription confirms the ids; what was sent is not sent again
    stream.send({"subscribe": expected})
    stream.ping("confirmed")
    endpoint.publish_results([_ok(expected[2], b"v")])
    assert set(stream.results(1)) == {expected[2]}
    snoop.ping("nothing of alice's")


def test_a_task_that_finished_before_its_expectation_arrives_with_the_confirming_subscription(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, streams: Callable[[ForwarderApi], Stream]
) -> None:
    """The expect frame and the submit travel on two connections: the task may be stored, and
    even finish, before the forwarder reads the expectation (expected ids get no store lookup);
    the subscription sent after the submit's answer finds it."""
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_id,) = alice.submit(registration["endpoint_id"], function_id, [b"x"])
    fake_endpoints(registration).publish_results([_ok(task_id, b"early")])
    wait_until(lambda: alice.task(task_id)["status"] == "success", what="the result to be stored")

    stream = streams(alice)
    stream.send({"expect": [task_id]})
    stream.send({"subscribe": [task_id]})
    assert stream.results(1)[task_id]["value"] == b"early"


def test_forget_drops_expected_ids_and_bad_frames_are_named(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, streams: Callable[[ForwarderApi], Stream]
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    first, second = alice.submit(registration["endpoint_id"], function_id, [b"1", b"2"])
    stream = streams(alice)
    stream.send({"expect": [first, second]})
    stream.send({"forget": [first]})
    fake_endpoints(registration).publish_results([_ok(first, b"1"), _ok(second, b"2")])
    assert set(stream.results(1)) == {second}
    stream.ping("only the second")
    for frame in ({"expect": "not a list"}, {"expect": [first, "not-a-uuid"]}, {"forget": [42]}):
        stream.send(frame)
        error = stream.receive()["error"]
        assert error["code"] == "INVALID_REQUEST" and next(iter(frame)) in error["message"]
    stream.ping("still alive")


def test_a_replay_of_large_results_sends_references_and_keeps_the_connection(
    sqlite_forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    """80 finished 1 MiB results (kept as blobs) are more than a connection's 64 MiB outbox: a
    subscription to all of them gets 80 references, not 80 MiB read from the blob store and a
    closed connection (code 1013, after which the client re-subscribed and overflowed again)."""
    alice = users(sqlite_forwarder)
    registration = alice.register_endpoint("large")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"%d" % i for i in range(80)])
    values = {task_id: os.urandom(1024 * 1024) for task_id in task_ids}
    endpoint = fake_endpoints(registration)
    for start in range(0, len(task_ids), 4):
        endpoint.publish_results([_ok(task_id, values[task_id]) for task_id in task_ids[start : start + 4]])
    last = task_ids[-1]
    wait_until(lambda: alice.task(last)["status"] == "success", timeout_s=60, what="the results stored")

    url = sqlite_forwarder.url.replace("http://", "ws://") + "/v1/results/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {alice.token}"}, open_timeout=15) as connection:
        stream = Stream(connection)
        stream.send({"subscribe": task_ids})
        replayed = stream.results(len(task_ids))
        stream.ping("still open")
    for task_id, result in replayed.items():
        assert result["ok"] is True and result["value"] is None
        assert result["value_size"] == len(values[task_id])
        assert result["value_sha256"] == hashlib.sha256(values[task_id]).hexdigest()
    one = task_ids[0]
    assert alice.http.get(f"/v1/tasks/{one}/result").content == values[one]  # where the reference leads
