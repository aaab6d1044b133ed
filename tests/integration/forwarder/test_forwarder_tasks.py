"""Tasks end to end through a real forwarder, broker and store (SQLite and PostgreSQL): submission,
task messages, results from a fake endpoint with its own broker credentials, deduplication,
forged results, dead letters, and the broker refusing a batch."""

from __future__ import annotations

import base64
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from taskfabric.endpoint_agent.broker_link import redelivery_limit_of
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.inbox import Inbox
from taskfabric.protocol import Result, Task, TaskBatch, TaskError, pack
from taskfabric.protocol.task_ids import submission_task_ids
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def _ok(task_id: str | uuid.UUID, value: bytes) -> Result:
    return Result(task_id=uuid.UUID(str(task_id)), ok=True, value=value, worker_python="3.11.9", attempts=1)


def test_submitted_batches_reach_the_endpoint_queue_in_order_with_bodies(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    body_f, body_g = b"f-body" + uuid.uuid4().bytes, b"g-body" + uuid.uuid4().bytes
    f = alice.register_function(body_f, python_version="3.11.7")
    g = alice.register_function(body_g)
    # msgpack: 250 tasks of f, then JSON: 3 tasks mixing f and g
    packed = alice.submit(endpoint_id, f, [b"m%d" % i for i in range(250)])
    mixed = alice.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        json={
            "tasks": [
                {"function_id": f, "payload": base64.b64encode(b"j0").decode(), "walltime_s": 30},
                {"function_id": g, "payload": base64.b64encode(b"j1").decode()},
                {"function_id": f, "payload": base64.b64encode(b"j2").decode(), "walltime_s": None},
            ],
            "client_python": "3.12.1",
        },
    )
    assert mixed.status_code == 201
    json_ids = mixed.json()["task_ids"]
    assert len(packed) == 250 and len(json_ids) == 3 and len(set(packed + json_ids)) == 253

    # stored, waiting
    status = alice.tasks(packed + json_ids)
    assert status["unknown"] == []
    assert {info["status"] for info in status["tasks"].values()} == {"waiting"}
    assert status["tasks"][json_ids[0]]["details"]["client_python"] == "3.12.1"
    assert status["tasks"][json_ids[0]]["endpoint_id"] == endpoint_id

    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 253, what="253 tasks on the task queue")
    batches = endpoint.batches
    # publish_batch_tasks=100: 250 tasks travel in 3 messages; the JSON request in one more
    assert [len(batch.tasks) for batch in batches] == [100, 100, 50, 3]
    assert [str(task_id) for task_id in endpoint.task_ids] == packed + json_ids
    assert [task.payload for task in batches[0].tasks[:2]] == [b"m0", b"m1"]
    for batch in batches[:3]:
        assert [(fb.function_id, fb.body, fb.python_version) for fb in batch.functions] == [
            (uuid.UUID(f), body_f, "3.11.7")
        ]
        assert batch.client_python == "3.11.7"
    assert {(fb.function_id, fb.body) for fb in batches[3].functions} == {
        (uuid.UUID(f), body_f),
        (uuid.UUID(g), body_g),
    }
    assert [task.walltime_s for task in batches[3].tasks] == [30.0, None, None]
    assert batches[3].client_python == "3.12.1"
    # published as the forwarder's own broker user (verified by the broker, kept when dead-lettered)
    admin = urllib.parse.urlsplit(forwarder.settings.amqp_url).username
    assert {delivery.user_id for delivery in endpoint.deliveries} == {admin}


def test_results_are_stored_once_and_readable(forwarder: Any, users: Users, fake_endpoints: FakeEndpoints) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"a", b"b", b"c"])
    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 3, what="tasks delivered")
    failure = Result(
        task_id=uuid.UUID(task_ids[1]),
        ok=False,
        error=TaskError(
            code="TASK_FAILED",
            message="ZeroDivisionError: division by zero",
            traceback="Traceback (most recent call last):\n  ...\nZeroDivisionError",
            exception_type="ZeroDivisionError",
            exception=b"pickled-exception",
        ),
        worker_python="3.11.9",
        started_at=1.0,
        finished_at=2.0,
        attempts=2,
    )
    endpoint.publish_results([_ok(task_ids[0], b"result-a"), failure])
    wait_until(lambda: alice.task(task_ids[1])["status"] == "failed", what="results stored")

    done = alice.task(task_ids[0])
    assert done["status"] == "success"
    assert base64.b64decode(done["result"]) == b"result-a"
    assert done["details"]["worker_python"] == "3.11.9"
    assert done["completed_at"] is not None and done["completed_at"] >= done["created_at"]
    failed = alice.task(task_ids[1])
    assert failed["error"]["code"] == "TASK_FAILED"
    assert failed["error"]["exception_type"] == "ZeroDivisionError"
    assert "ZeroDivisionError" in failed["error"]["traceback"]
    assert base64.b64decode(failed["error"]["exception"]) == b"pickled-exception"
    assert failed["details"]["attempts"] == 2
    assert failed["details"]["started_at"] == 1.0

    # a duplicate (a task run twice after a crash) changes nothing; the third result still lands
    endpoint.publish_results([_ok(task_ids[0], b"second run"), _ok(task_ids[1], b"late success")])
    endpoint.publish_results([_ok(task_ids[2], b"result-c")])
    wait_until(lambda: alice.task(task_ids[2])["status"] == "success", what="the third result")
    assert base64.b64decode(alice.task(task_ids[0])["result"]) == b"result-a"
    assert alice.task(task_ids[1])["status"] == "failed"
    batch = alice.tasks(task_ids)
    assert {info["status"] for info in batch["tasks"].values()} == {"success", "failed"}


def test_forged_and_misdirected_results_are_not_accepted(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, rabbit: RabbitTransport
) -> None:
    alice = users(forwarder)
    a = alice.register_endpoint("a")
    b = alice.register_endpoint("b")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_b,) = alice.submit(b["endpoint_id"], function_id, [b"for b"])
    (task_a,) = alice.submit(a["endpoint_id"], function_id, [b"for a"])
    endpoint_a, endpoint_b = fake_endpoints(a), fake_endpoints(b)

    # A learned B's result queue name and publishes B's result there, as itself: rejected
    endpoint_a.publish_results([_ok(task_b, b"forged")], routing_key=b["broker"]["result_queue"])
    # without a user id at all: rejected
    endpoint_a.publish_results([_ok(task_b, b"anonymous")], user_id=None, routing_key=b["broker"]["result_queue"])
    # A, on its own queue, reporting B's task: ignored (the task is not A's)
    endpoint_a.publish_results([_ok(task_b, b"not yours")])
    # then a genuine result of A's own task, and of B's: both land
    endpoint_a.publish_results([_ok(task_a, b"genuine a")])
    endpoint_b.publish_results([_ok(task_b, b"genuine b")])
    # bounded waits, generous: on a loaded machine ingest on PostgreSQL took more than 10 s once
    wait_until(lambda: alice.task(task_b)["status"] == "success", timeout_s=60, what="B's genuine result")
    wait_until(lambda: alice.task(task_a)["status"] == "success", timeout_s=60, what="A's genuine result")
    assert base64.b64decode(alice.task(task_b)["result"]) == b"genuine b"
    assert base64.b64decode(alice.task(task_a)["result"]) == b"genuine a"
    # the rejected ones were dead-lettered and consumed from there without effect
    prefix = forwarder.settings.topology_prefix
    wait_until(lambda: rabbit.queue_depth(f"{prefix}.dead-letters") == 0, what="dead letters consumed")


@pytest.mark.parametrize("requeue", [False, True], ids=["rejected", "delivery_limit"])
def test_dead_lettered_task_batches_fail_their_tasks(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, requeue: bool
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("poisoned")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"x", b"y"])
    endpoint = fake_endpoints(registration)
    deliveries: list[Delivery] = []

    def cannot_handle(delivery: Delivery) -> None:
        # the agent gives the message back every time (requeue), or refuses it at once
        deliveries.append(delivery)
        endpoint.transport.nack(delivery, requeue=requeue)

    endpoint.transport.consume(registration["broker"]["task_queue"], cannot_handle, prefetch=1)
    wait_until(lambda: alice.task(task_ids[0])["status"] == "failed", what="tasks failed by the dead letter")
    reason = "delivery_limit" if requeue else "rejected"
    for task_id in task_ids:
        error = alice.task(task_id)["error"]
        assert error["code"] == "DEAD_LETTERED"
        assert reason in error["message"]
    assert len(deliveries) == (forwarder.settings.delivery_limit + 1 if requeue else 1)


def test_on_classic_queues_poison_task_batches_are_dead_lettered_and_results_land(
    classic_forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    """queue_type classic: the broker counts no deliveries; a consumer counting as the agent does
    (`Inbox` with the registration's limit) still gets a poison message dead-lettered after
    delivery_limit returns, and its tasks fail with the typed DEAD_LETTERED error."""
    alice = users(classic_forwarder)
    registration = alice.register_endpoint("classic-poisoned")
    assert (registration["broker"]["queue_type"], registration["broker"]["delivery_limit"]) == ("classic", 2)
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"x", b"y"])
    endpoint = fake_endpoints(registration)
    connection = EndpointConnection.of(uuid.UUID(registration["endpoint_id"]), endpoint.broker)
    deliveries: list[Delivery] = []

    def cannot_handle(batch: TaskBatch, delivery: Delivery) -> None:  # an agent dying before every ack
        deliveries.append(delivery)
        endpoint.transport.nack(delivery, requeue=True)

    inbox = Inbox(
        endpoint.transport,
        endpoint.broker.task_queue,
        cannot_handle,
        accepts=(TaskBatch,),
        prefetch=1,
        redelivery=redelivery_limit_of(connection),
    )
    wait_until(lambda: alice.task(task_ids[0])["status"] == "failed", what="tasks failed by the dead letter")
    inbox.cancel()
    for task_id in task_ids:
        error = alice.task(task_id)["error"]
        assert error["code"] == "DEAD_LETTERED"
        assert "delivery_limit" in error["message"] and "after 3 deliveries" in error["message"]
    assert [d.delivery_count for d in deliveries] == [0, 1, 2]

    # the forwarder consumes the classic result queue: a result lands once
    more = alice.submit(registration["endpoint_id"], function_id, [b"z"])
    endpoint.publish_results([_ok(more[0], b"fine")])
    wait_until(lambda: alice.task(more[0])["status"] == "success", what="the result on a classic queue")
    assert base64.b64decode(alice.task(more[0])["result"]) == b"fine"


def test_a_batch_the_broker_does_not_take_is_not_accepted(
    forwarder: Any, users: Users, rabbit: RabbitTransport
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lost-queue")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    with forwarder.store() as store:
        before = store.tasks.count()
        # the task queue vanished behind the forwarder's back: the publish is unroutable
        rabbit.delete_queue(registration["broker"]["task_queue"])
        response = alice.http.post(
            f"/v1/endpoints/{registration['endpoint_id']}/tasks",
            content=msgpack.packb({"tasks": [{"function_id": function_id, "payload": b"p"}] * 5}),
            headers={"Content-Type": "application/msgpack"},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "BROKER_UNAVAILABLE"
        assert "not recorded" in response.json()["error"]["message"]
        assert "same submission_id" in response.json()["error"]["message"]
        assert store.tasks.count() == before
    # re-registering declares the queue again, and submitting works
    alice.register_endpoint("lost-queue")
    assert len(alice.submit(registration["endpoint_id"], function_id, [b"p"])) == 1


def _submit_once(api: ForwarderApi, endpoint_id: str, function_id: str, count: int, submission_id: Any) -> Any:
    return api.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        content=msgpack.packb(
            {
                "tasks": [{"function_id": function_id, "payload": b"p%d" % i} for i in range(count)],
                "submission_id": submission_id,
            }
        ),
        headers={"Content-Type": "application/msgpack"},
    )


def _ids(response: Any) -> list[str]:
    return [str(task_id) for task_id in msgpack.unpackb(response.content)["task_ids"]]


def test_a_retried_submission_never_makes_second_tasks(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, rabbit: RabbitTransport
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = alice.register_endpoint("idempotent")
    endpoint_id = registration["endpoint_id"]
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    key = str(uuid.uuid4())
    with forwarder.store() as store:
        before = store.tasks.count()
        first = _submit_once(alice, endpoint_id, function_id, 7, key)
        # the answer was lost (a timeout, a dropped connection): the client sends the same request again
        again = _submit_once(alice, endpoint_id, function_id, 7, key)
        assert first.status_code == again.status_code == 201
        task_ids = _ids(first)
        assert _ids(again) == task_ids and len(set(task_ids)) == 7
        assert store.tasks.count() == before + 7
    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) >= 7, what="the tasks on the queue")
    # the retry may publish the still-waiting tasks again (the agent's ledger deduplicates them),
    # but it names no other task
    assert {str(task_id) for task_id in endpoint.task_ids} == set(task_ids)

    # the same key for another batch: refused when it would name the same tasks, else other tasks
    other_function = alice.register_function(b"h" + uuid.uuid4().bytes)
    assert _submit_once(alice, endpoint_id, other_function, 7, key).status_code == 409
    smaller = _submit_once(alice, endpoint_id, function_id, 3, key)
    assert smaller.status_code == 201 and not set(_ids(smaller)) & set(task_ids)
    # another user's same key names other tasks
    bobs_endpoint = bob.register_endpoint("bobs")["endpoint_id"]
    bobs_function = bob.register_function(b"g" + uuid.uuid4().bytes)
    bobs = _submit_once(bob, bobs_endpoint, bobs_function, 7, key)
    assert bobs.status_code == 201 and not set(_ids(bobs)) & set(task_ids)
    assert _submit_once(alice, endpoint_id, function_id, 1, "not-a-uuid").status_code == 400


def test_a_retry_after_a_503_names_the_same_tasks(forwarder: Any, users: Users, rabbit: RabbitTransport) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("retry-503")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    key = str(uuid.uuid4())
    rabbit.delete_queue(registration["broker"]["task_queue"])
    refused = _submit_once(alice, registration["endpoint_id"], function_id, 4, key)
    assert refused.status_code == 503
    alice.register_endpoint("retry-503")  # declares the queue again
    # retried while 503, as the client does: the forwarder's queue check may have seen the queue
    # missing and holds submits (503) until its next check finds it rebuilt
    accepted = wait_until(
        lambda: (
            (answer := _submit_once(alice, registration["endpoint_id"], function_id, 4, key)).status_code != 503
            and answer
        ),
        timeout_s=60,
        what="a submit the repaired queue takes",
    )
    again = _submit_once(alice, registration["endpoint_id"], function_id, 4, key)
    assert accepted.status_code == again.status_code == 201
    assert _ids(accepted) == _ids(again)
    assert {info["status"] for info in alice.tasks(_ids(accepted))["tasks"].values()} == {"waiting"}


def test_a_retry_publishes_tasks_a_dead_forwarder_stored_but_never_published(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("orphans")
    endpoint_id = uuid.UUID(registration["endpoint_id"])
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    key = uuid.uuid4()
    owner_id = uuid.UUID(alice.http.get("/v1/whoami").json()["user_id"])
    task_ids = submission_task_ids(owner_id, key, 4)
    with forwarder.store() as store:  # what a forwarder killed between storing and publishing leaves
        store.tasks.insert(
            owner_id=owner_id,
            endpoint_id=endpoint_id,
            client_python="3.11.7",
            new_tasks=[NewTask(task_id=tid, function_id=uuid.UUID(function_id), payload=b"p") for tid in task_ids],
            created_at=time.time(),
        )
    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    retried = _submit_once(alice, str(endpoint_id), function_id, 4, str(key))  # the client's retry
    assert retried.status_code == 201 and _ids(retried) == [str(tid) for tid in task_ids]
    wait_until(lambda: set(endpoint.task_ids) == set(task_ids), what="the stored tasks published by the retry")


def test_submission_checks(forwarder: Any, users: Users, rabbit: RabbitTransport) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    mine = alice.register_function(b"mine" + uuid.uuid4().bytes)
    bobs = bob.register_function(b"bob's" + uuid.uuid4().bytes)
    url = f"/v1/endpoints/{endpoint_id}/tasks"

    def submit_json(tasks: Any, **extra: Any) -> Any:
        return alice.http.post(url, json={"tasks": tasks, **extra})

    one = [{"function_id": mine, "payload": "eA=="}]
    assert submit_json(one).status_code == 201
    cases = {
        400: [
            submit_json([]),
            submit_json([{"function_id": "nope", "payload": "eA=="}]),
            submit_json([{"function_id": mine, "payload": "%%%"}]),
            submit_json([{"function_id": mine, "payload": "eA==", "walltime_s": -1}]),
            submit_json(one, client_python="3.11\n"),
            alice.http.post(url, content=b"\x93garbage", headers={"Content-Type": "application/msgpack"}),
            alice.http.post(url, content=b"[1, 2", headers={"Content-Type": "application/json"}),
            alice.http.post("/v1/endpoints/not-an-id/tasks", json={"tasks": one}),
        ],
        403: [bob.http.post(url, json={"tasks": one})],
        404: [
            submit_json([{"function_id": bobs, "payload": "eA=="}]),  # bob's private function: unseen
            submit_json([{"function_id": str(uuid.uuid4()), "payload": "eA=="}]),
            alice.http.post(f"/v1/endpoints/{uuid.uuid4()}/tasks", json={"tasks": one}),
        ],
        413: [
            alice.http.post(
                url,
                content=msgpack.packb(
                    {"tasks": [{"function_id": mine, "payload": b"x" * (forwarder.settings.max_payload_bytes + 1)}]}
                ),
                headers={"Content-Type": "application/msgpack"},
            ),
            submit_json(one * (forwarder.settings.max_batch_tasks + 1)),
        ],
        415: [alice.http.post(url, content=b"x", headers={"Content-Type": "text/plain"})],
    }
    for status, responses in cases.items():
        for response in responses:
            assert response.status_code == status, response.text
            assert set(response.json()["error"]) >= {"code", "message"}
    assert str(forwarder.settings.max_payload_bytes) in cases[413][0].json()["error"]["message"]
    # nothing of the refused requests was stored or published
    alice_id = uuid.UUID(alice.http.get("/v1/whoami").json()["user_id"])
    with forwarder.store() as store:
        assert store.tasks.count(owner_id=alice_id) == 1
        assert store.tasks.count(owner_id=alice_id, status=TaskStatus.WAITING) == 1
    assert rabbit.queue_depth(registration["broker"]["task_queue"]) == 1


def test_a_dead_letter_from_an_endpoint_only_fails_its_own_tasks(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    a, b = alice.register_endpoint("a"), alice.register_endpoint("b")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_a,) = alice.submit(a["endpoint_id"], function_id, [b"a"])
    (task_b,) = alice.submit(b["endpoint_id"], function_id, [b"b"])
    endpoint_b = fake_endpoints(b)

    def dead_letter(task_id: str) -> None:
        batch = TaskBatch(tasks=[Task(task_id=uuid.UUID(task_id), function_id=uuid.UUID(function_id), payload=b"")])
        endpoint_b.transport.publish(
            OutgoingMessage(
                exchange=b["broker"]["dead_letter_exchange"],
                routing_key="",
                body=pack(batch),
                user_id=endpoint_b.username,
            )
        ).result(timeout=15)

    dead_letter(task_a)  # B names A's task: no effect
    dead_letter(task_b)  # its own: failed
    wait_until(lambda: alice.task(task_b)["status"] == "failed", what="B's dead-lettered task failed")
    assert alice.task(task_b)["error"]["code"] == "DEAD_LETTERED"
    assert alice.task(task_a)["status"] == "waiting"
