"""Endpoints on a real forwarder and broker: registration (stable id, queues, a narrow broker user),
status reports, deletion (user, connections, queues and waiting tasks)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from taskfabric.errors import AccessRefused, NotFound
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.testing import unique_name, wait_until
from taskfabric.transport import RabbitTransport

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def test_registration_is_stable_and_provisions_the_broker(
    forwarder: Any, users: Users, rabbit: RabbitTransport
) -> None:
    alice = users(forwarder)
    name = unique_name("lab")
    first = alice.http.post("/v1/endpoints", json={"name": name, "metadata": {"site": "lab"}})
    assert first.status_code == 201
    registration = first.json()
    endpoint_id = registration["endpoint_id"]
    broker = registration["broker"]
    prefix = forwarder.settings.topology_prefix
    assert registration["name"] == name
    assert registration["status_period_s"] == forwarder.settings.status_period_s
    assert broker["username"] == f"ep-{endpoint_id}"
    assert broker["task_queue"].startswith(f"{prefix}.tasks.{endpoint_id}.")
    assert broker["result_queue"].startswith(f"{prefix}.results.{endpoint_id}.")
    assert broker["results_exchange"] == f"{prefix}.results"
    assert broker["dead_letter_exchange"] == f"{prefix}.dead-letter"
    assert broker["tasks_exchange"] == f"{prefix}.tasks"  # a stopping agent hands tasks back through it
    assert broker["amqp_url"].startswith(f"amqp://ep-{endpoint_id}:")
    # queues declared at registration, before any traffic; the broker user exists
    assert rabbit.queue_depth(broker["task_queue"]) == 0
    assert rabbit.queue_depth(broker["result_queue"]) == 0
    with forwarder.management() as management:
        assert management.user_exists(broker["username"])

    # the same name again: the same id and queues, fresh credentials (the old ones stop working)
    again = alice.http.post("/v1/endpoints", json={"name": name})
    assert again.status_code == 200
    assert again.json()["endpoint_id"] == endpoint_id
    assert again.json()["broker"]["task_queue"] == broker["task_queue"]
    assert again.json()["broker"]["amqp_url"] != broker["amqp_url"]
    with pytest.raises(AccessRefused):
        RabbitTransport(broker["amqp_url"]).start(wait_s=3)
    # by id, under a new name
    renamed = alice.http.post("/v1/endpoints", json={"name": name + "-2", "endpoint_id": endpoint_id})
    assert renamed.status_code == 200
    assert renamed.json()["endpoint_id"] == endpoint_id
    assert alice.endpoint(endpoint_id)["name"] == name + "-2"
    listed = alice.http.get("/v1/endpoints").json()["endpoints"]
    assert [e["endpoint_id"] for e in listed] == [endpoint_id]
    assert listed[0]["status"] == "offline"


def test_registration_conflicts_and_other_users(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    one = alice.register_endpoint("one")
    two = alice.register_endpoint("two")
    # a name already used by another of your endpoints
    clash = alice.http.post("/v1/endpoints", json={"name": "one", "endpoint_id": two["endpoint_id"]})
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "CONFLICT"
    # bob cannot take over alice's endpoint, but may use the same name for his own
    taken = bob.http.post("/v1/endpoints", json={"name": "one", "endpoint_id": one["endpoint_id"]})
    assert taken.status_code == 403
    bobs = bob.register_endpoint("one")
    assert bobs["endpoint_id"] != one["endpoint_id"]
    for response in (
        bob.http.get(f"/v1/endpoints/{one['endpoint_id']}"),
        bob.http.get(f"/v1/endpoints/{one['endpoint_id']}/status"),
        bob.http.delete(f"/v1/endpoints/{one['endpoint_id']}"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"
    assert alice.endpoint(one["endpoint_id"])["name"] == "one"
    assert alice.http.get(f"/v1/endpoints/{uuid.uuid4()}").status_code == 404
    assert alice.http.get("/v1/endpoints/123").status_code == 400
    assert alice.http.post("/v1/endpoints", json={"name": "bad name!"}).status_code == 422
    # an unknown id of your choosing creates the endpoint with that id
    chosen = str(uuid.uuid4())
    created = alice.http.post("/v1/endpoints", json={"name": "three", "endpoint_id": chosen})
    assert (created.status_code, created.json()["endpoint_id"]) == (201, chosen)


def test_endpoint_credentials_reach_only_their_own_queue(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    a = alice.register_endpoint("a")
    b = alice.register_endpoint("b")
    endpoint_a = fake_endpoints(a)
    endpoint_a.consume_tasks()  # its own task queue: allowed
    with pytest.raises(AccessRefused):
        endpoint_a.transport.consume(b["broker"]["task_queue"], lambda d: None, prefetch=1)
    with pytest.raises(AccessRefused):
        endpoint_a.transport.consume(a["broker"]["result_queue"], lambda d: None, prefetch=1)
    with pytest.raises(AccessRefused):
        endpoint_a.transport.declare_queue("sneaky-" + uuid.uuid4().hex)


def test_status_reports_make_an_endpoint_online_then_offline(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    endpoint = fake_endpoints(registration)
    assert alice.endpoint(endpoint_id)["status"] == "offline"
    endpoint.publish_status("online", managers=2, workers=8, idle_workers=5, hostname="node1")
    info = wait_until(
        lambda: (found := alice.endpoint(endpoint_id))["status"] == "online" and found, what="online status"
    )
    assert (info["managers"], info["workers"], info["idle_workers"], info["hostname"]) == (2, 8, 5, "node1")
    status = alice.http.get(f"/v1/endpoints/{endpoint_id}/status").json()
    assert status["status"] == "online"
    endpoint.publish_status("draining")
    wait_until(lambda: alice.endpoint(endpoint_id)["status"] == "draining", what="draining status")
    endpoint.publish_status("online")
    wait_until(lambda: alice.endpoint(endpoint_id)["status"] == "online", what="online again")
    # no report for endpoint_offline_after_s: offline
    wait_until(lambda: alice.endpoint(endpoint_id)["status"] == "offline", timeout_s=15, what="offline status")
    # and the store has it (what other replicas read)
    with forwarder.store() as store:
        record = store.endpoints.get(uuid.UUID(endpoint_id))
        assert record is not None and record.status.state == "online" and record.status.workers == 0


def test_a_degraded_endpoint_is_shown_with_its_reason_and_stored(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    endpoint = fake_endpoints(registration)
    endpoint.publish_status("degraded", status_reason="the ledger cannot write: disk I/O error")
    info = wait_until(
        lambda: (found := alice.endpoint(endpoint_id))["status"] == "degraded" and found, what="degraded status"
    )
    assert info["status_reason"] == "the ledger cannot write: disk I/O error"
    with forwarder.store() as store:
        wait_until(
            lambda: (
                (record := store.endpoints.get(uuid.UUID(endpoint_id))) is not None
                and record.status.status_reason == info["status_reason"]
            ),
            what="the reason in the store",
        )
    endpoint.publish_status("online")
    info = wait_until(lambda: (found := alice.endpoint(endpoint_id))["status"] == "online" and found, what="online")
    assert info["status_reason"] == ""


def test_deleting_an_endpoint_revokes_its_user_queues_and_tasks(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, rabbit: RabbitTransport
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("doomed")
    endpoint_id, broker = registration["endpoint_id"], registration["broker"]
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(endpoint_id, function_id, [b"1", b"2", b"3"])
    endpoint = fake_endpoints(registration)
    wait_until(lambda: endpoint.transport.connected, what="the endpoint connected")
    with forwarder.management() as management:
        wait_until(lambda: management.connections_of(broker["username"]), what="its connection listed")

        assert alice.http.delete(f"/v1/endpoints/{endpoint_id}").status_code == 204

        assert not management.user_exists(broker["username"])
        wait_until(lambda: not management.connections_of(broker["username"]), what="its connections closed")
    wait_until(lambda: not endpoint.transport.connected, what="the fake endpoint disconnected")
    for queue in (broker["task_queue"], broker["result_queue"]):
        with pytest.raises(NotFound):
            rabbit.queue_depth(queue)
    for task_id in task_ids:
        info = alice.task(task_id)
        assert info["status"] == "failed"
        assert info["error"]["code"] == "ENDPOINT_DELETED"
    assert alice.http.get(f"/v1/endpoints/{endpoint_id}").status_code == 404
    assert alice.http.get("/v1/endpoints").json()["endpoints"] == []
    # the same name now registers a new endpoint
    assert alice.register_endpoint("doomed")["endpoint_id"] != endpoint_id
