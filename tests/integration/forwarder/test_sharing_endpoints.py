"""Endpoint sharing through a real forwarder, broker and store (SQLite and PostgreSQL): alice owns
an endpoint, bob gets a grant, carol has none. Grants to users and groups (membership changes
take effect at once), revocation, public endpoints, per-grant limits, who sees which tasks, the
sharing audit, and every new route refused to strangers."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgpack
import pytest

from taskfabric.forwarder.admin import delete_user
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result
from taskfabric.testing import unique_name, wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def _ok(task_id: str | uuid.UUID, value: bytes) -> Result:
    return Result(task_id=uuid.UUID(str(task_id)), ok=True, value=value, worker_python="3.11.9", attempts=1)


def _submit(api: ForwarderApi, endpoint_id: str, function_id: str, count: int = 1) -> httpx.Response:
    """One msgpack batch of `count` tasks; the raw response (tests look at refusals)."""
    tasks = [{"function_id": function_id, "payload": b"p%d" % index} for index in range(count)]
    return api.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks",
        content=msgpack.packb({"tasks": tasks, "client_python": "3.11.7"}),
        headers={"Content-Type": "application/msgpack"},
    )


def _task_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 201, response.text
    return list(msgpack.unpackb(response.content)["task_ids"])


def _share(owner: ForwarderApi, endpoint_id: str, *grants: dict[str, Any], public: bool = False) -> dict[str, Any]:
    response = owner.http.put(f"/v1/endpoints/{endpoint_id}/access", json={"public": public, "grants": list(grants)})
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _function(api: ForwarderApi) -> str:
    return api.register_function(b"body-" + uuid.uuid4().bytes, name="f")


def _code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_a_grant_lets_bob_submit_his_tasks_name_him_and_carol_is_refused(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    document = _share(alice, endpoint_id, {"user": bob.username})
    assert document["owner"] == alice.username and document["public"] is False
    assert [(g["user"], g["role"], g["granted_by"]) for g in document["grants"]] == [
        (bob.username, "submit", alice.username)
    ]

    bob_ids = _task_ids(_submit(bob, endpoint_id, _function(bob), 2))
    alice_ids = _task_ids(_submit(alice, endpoint_id, _function(alice)))
    refused = _submit(carol, endpoint_id, _function(carol))
    assert refused.status_code == 403 and _code(refused) == "FORBIDDEN"

    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 3, what="three tasks on alice's queue")
    users_of = {str(task.task_id): task.user for batch in endpoint.batches for task in batch.tasks}
    assert users_of == {bob_ids[0]: bob.username, bob_ids[1]: bob.username, alice_ids[0]: alice.username}

    endpoint.publish_results([_ok(task_id, b"r-" + task_id.encode()) for task_id in bob_ids])
    wait_until(lambda: bob.task(bob_ids[1])["status"] == "success", what="bob's results")
    assert base64.b64decode(bob.task(bob_ids[0])["result"]) == b"r-" + bob_ids[0].encode()
    # the tasks are bob's: alice (the endpoint's owner) does not read their results
    assert alice.http.get(f"/v1/tasks/{bob_ids[0]}").status_code == 404


def test_unsharing_refuses_the_next_submit_at_once_and_accepted_tasks_still_finish(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    function_id = _function(bob)
    _share(alice, endpoint_id, {"user": bob.username})
    accepted = _task_ids(_submit(bob, endpoint_id, function_id, 3))

    _share(alice, endpoint_id)  # no grants
    refused = _submit(bob, endpoint_id, function_id)
    assert refused.status_code == 403 and _code(refused) == "FORBIDDEN"
    assert bob.http.get(f"/v1/endpoints/{endpoint_id}").status_code == 403

    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 3, what="bob's accepted tasks delivered")
    endpoint.publish_results([_ok(task_id, b"done") for task_id in accepted])
    wait_until(
        lambda: {info["status"] for info in bob.tasks(accepted)["tasks"].values()} == {"success"},
        what="bob's accepted tasks finished after the revocation",
    )


def test_a_public_endpoint_takes_everyone_s_tasks_and_only_the_owner_deletes_it(forwarder: Any, users: Users) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    endpoint_id = alice.register_endpoint("open")["endpoint_id"]
    assert _submit(carol, endpoint_id, _function(carol)).status_code == 403
    _share(alice, endpoint_id, {"user": bob.username, "role": "manage"}, public=True)

    _task_ids(_submit(carol, endpoint_id, _function(carol)))
    listed = {item["endpoint_id"]: item for item in carol.http.get("/v1/endpoints").json()["endpoints"]}
    assert listed[endpoint_id]["role"] == "submit" and listed[endpoint_id]["owner"] == alice.username

    # a manager changes sharing but neither deletes nor re-registers the endpoint
    assert bob.http.delete(f"/v1/endpoints/{endpoint_id}").status_code == 403
    again = bob.http.post("/v1/endpoints", json={"name": "open", "endpoint_id": endpoint_id})
    assert again.status_code == 403
    _share(bob, endpoint_id, {"user": bob.username, "role": "manage"}, public=False)
    assert _submit(carol, endpoint_id, _function(carol)).status_code == 403


@pytest.mark.parametrize("limit", ["max_waiting_tasks", "max_tasks_per_day"])
def test_per_grant_limits_answer_429_naming_the_limit(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, limit: str
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    registration = alice.register_endpoint("limited")
    endpoint_id = registration["endpoint_id"]
    function_id = _function(bob)
    _share(alice, endpoint_id, {"user": bob.username, limit: 3})

    first = _task_ids(_submit(bob, endpoint_id, function_id, 2))
    refused = _submit(bob, endpoint_id, function_id, 2)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["quota"], error["limit"]) == ("GRANT_LIMIT", limit, 3)
    assert int(refused.headers["Retry-After"]) >= 1
    # the owner is not limited by grants
    _task_ids(_submit(alice, endpoint_id, _function(alice), 5))

    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 7, what="tasks delivered")
    endpoint.publish_results([_ok(task_id, b"done") for task_id in first])
    wait_until(lambda: bob.task(first[1])["status"] == "success", what="bob's first tasks finished")
    after = _submit(bob, endpoint_id, function_id, 2)
    if limit == "max_waiting_tasks":  # finished tasks make room
        _task_ids(after)
    else:  # the day's count does not go down
        assert after.status_code == 429 and after.json()["error"]["quota"] == "max_tasks_per_day"
        _task_ids(_submit(bob, endpoint_id, function_id, 1))  # up to the limit exactly


def test_submitters_see_their_own_tasks_and_managers_see_everyone_s(forwarder: Any, users: Users) -> None:
    alice, bob, dave, carol = (users(forwarder) for _ in range(4))
    endpoint_id = alice.register_endpoint("shared")["endpoint_id"]
    _share(alice, endpoint_id, {"user": bob.username}, {"user": dave.username, "role": "manage"})
    bob_ids = _task_ids(_submit(bob, endpoint_id, _function(bob), 2))
    alice_ids = _task_ids(_submit(alice, endpoint_id, _function(alice)))

    mine = bob.list_tasks(endpoint_id=endpoint_id)["tasks"]
    assert {task["task_id"] for task in mine} == set(bob_ids)
    assert {task["submitted_by"] for task in mine} == {bob.username}
    for owner_or_manager in (alice, dave):
        everyone = owner_or_manager.list_tasks(endpoint_id=endpoint_id, all_users="true")["tasks"]
        assert {task["task_id"]: task["submitted_by"] for task in everyone} == {
            **dict.fromkeys(bob_ids, bob.username),
            alice_ids[0]: alice.username,
        }
    for refused_user in (bob, carol):
        response = refused_user.http.get("/v1/tasks", params={"endpoint_id": endpoint_id, "all_users": "true"})
        assert response.status_code == 403
    assert alice.http.get("/v1/tasks", params={"all_users": "true"}).status_code == 400
    assert alice.http.get("/v1/tasks", params={"all_users": "maybe"}).status_code == 400
    unknown = alice.http.get("/v1/tasks", params={"endpoint_id": str(uuid.uuid4()), "all_users": "true"})
    assert unknown.status_code == 404


def test_what_each_role_sees_of_the_endpoint(forwarder: Any, users: Users) -> None:
    alice, bob, dave, carol = (users(forwarder) for _ in range(4))
    endpoint_id = alice.register_endpoint("seen")["endpoint_id"]
    _share(alice, endpoint_id, {"user": bob.username}, {"user": dave.username, "role": "manage"})

    full = alice.endpoint(endpoint_id)
    assert (full["role"], full["owner"], full["name"]) == ("owner", alice.username, "seen")
    managed = dave.endpoint(endpoint_id)
    assert managed["role"] == "manage" and "workers" in managed and "hostname" in managed
    submitted = bob.endpoint(endpoint_id)
    assert (submitted["role"], submitted["owner"], submitted["name"]) == ("submit", alice.username, "seen")
    assert "status" in submitted and "workers" not in submitted and "hostname" not in submitted
    assert bob.http.get(f"/v1/endpoints/{endpoint_id}/status").json()["role"] == "submit"
    assert carol.http.get(f"/v1/endpoints/{endpoint_id}").status_code == 403

    listed = {item["endpoint_id"]: item for item in bob.http.get("/v1/endpoints").json()["endpoints"]}
    assert listed[endpoint_id]["role"] == "submit" and listed[endpoint_id]["owner"] == alice.username
    own = alice.http.get("/v1/endpoints").json()["endpoints"]
    assert [(item["endpoint_id"], item["role"]) for item in own] == [(endpoint_id, "owner")]
    assert endpoint_id not in {item["endpoint_id"] for item in carol.http.get("/v1/endpoints").json()["endpoints"]}


def test_the_audit_lists_sharing_changes_and_cross_user_submits(forwarder: Any, users: Users) -> None:
    alice, bob, dave = users(forwarder), users(forwarder), users(forwarder)
    endpoint_id = alice.register_endpoint("audited")["endpoint_id"]
    _share(alice, endpoint_id, {"user": bob.username}, {"user": dave.username, "role": "manage"})
    bob_ids = _task_ids(_submit(bob, endpoint_id, _function(bob), 2))
    _task_ids(_submit(alice, endpoint_id, _function(alice)))  # the owner's own: not audited

    for reader in (alice, dave):
        response = reader.http.get(f"/v1/endpoints/{endpoint_id}/audit")
        assert response.status_code == 200
        events = response.json()["events"]
        assert [(event["action"], event["actor"]) for event in events] == [
            ("endpoint.submit", bob.username),
            ("endpoint.access", alice.username),
        ]
        assert events[0]["detail"] == {"tasks": 2, "first_task_id": bob_ids[0]}
        after = events[1]["detail"]["after"]
        assert events[1]["detail"]["before"] == {"public": False, "grants": []}
        assert {grant["role"] for grant in after["grants"]} == {"submit", "manage"}
    older = alice.http.get(f"/v1/endpoints/{endpoint_id}/audit", params={"limit": 1}).json()["events"]
    assert [event["action"] for event in older] == ["endpoint.submit"]
    assert bob.http.get(f"/v1/endpoints/{endpoint_id}/audit").status_code == 403


def test_every_new_route_refuses_strangers_and_bad_input(forwarder: Any, users: Users) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    endpoint_id = alice.register_endpoint("guarded")["endpoint_id"]
    _share(alice, endpoint_id, {"user": bob.username})
    body = {"public": True, "grants": []}
    for stranger, status in ((carol, 403), (bob, 403)):  # no role; the submit role does not manage
        assert stranger.http.get(f"/v1/endpoints/{endpoint_id}/access").status_code == status
        assert stranger.http.put(f"/v1/endpoints/{endpoint_id}/access", json=body).status_code == status
        assert stranger.http.get(f"/v1/endpoints/{endpoint_id}/audit").status_code == status
    unknown = uuid.uuid4()
    assert alice.http.get(f"/v1/endpoints/{unknown}/access").status_code == 404
    assert alice.http.put(f"/v1/endpoints/{unknown}/access", json=body).status_code == 404
    assert alice.http.get(f"/v1/endpoints/{unknown}/audit").status_code == 404
    assert alice.http.get("/v1/endpoints/not-an-id/access").status_code == 400

    def put(grants: list[dict[str, Any]]) -> httpx.Response:
        return alice.http.put(f"/v1/endpoints/{endpoint_id}/access", json={"grants": grants})

    cases: list[tuple[list[dict[str, Any]], int, str]] = [
        ([{"user": "nobody-" + uuid.uuid4().hex}], 404, "USER_NOT_FOUND"),
        ([{"user": bob.username, "group": str(uuid.uuid4())}], 400, "INVALID_GRANT"),
        ([{}], 400, "INVALID_GRANT"),
        ([{"user": alice.username}], 400, "INVALID_GRANT"),
        ([{"user": bob.username}, {"user": bob.username, "role": "manage"}], 400, "INVALID_GRANT"),
        ([{"group": "not-a-group"}], 400, "INVALID_GRANT"),
        ([{"group": str(uuid.uuid4())}], 404, "GROUP_NOT_FOUND"),
        ([{"user": bob.username, "role": "owner"}], 422, "INVALID_REQUEST"),
        ([{"user": bob.username, "max_waiting_tasks": -1}], 422, "INVALID_REQUEST"),
    ]
    for grants, status, code in cases:
        response = put(grants)
        assert (response.status_code, _code(response)) == (status, code), grants
    malformed = alice.http.put(
        f"/v1/endpoints/{endpoint_id}/access", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400
    # nothing above changed the document
    assert [grant["user"] for grant in alice.http.get(f"/v1/endpoints/{endpoint_id}/access").json()["grants"]] == [
        bob.username
    ]


def test_deleting_a_user_deletes_their_grants(forwarder: Any, users: Users) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    endpoint_id = alice.register_endpoint("granted")["endpoint_id"]
    _share(alice, endpoint_id, {"user": bob.username}, {"user": carol.username, "role": "manage"})
    delete_user(forwarder.settings, bob.username)
    document = alice.http.get(f"/v1/endpoints/{endpoint_id}/access").json()
    assert [(grant["user"], grant["role"]) for grant in document["grants"]] == [(carol.username, "manage")]


def _group(owner: ForwarderApi, *members: ForwarderApi) -> str:
    created = owner.http.post("/v1/groups", json={"name": unique_name("lab")})
    assert created.status_code == 201, created.text
    group_id = str(created.json()["group_id"])
    for member in members:
        assert owner.http.post(f"/v1/groups/{group_id}/members", json={"user": member.username}).status_code == 201
    return group_id


def test_a_group_grant_follows_membership_at_once(forwarder: Any, users: Users) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    endpoint_id = alice.register_endpoint("lab")["endpoint_id"]
    group_id = _group(alice, bob)
    document = _share(alice, endpoint_id, {"group": group_id, "max_tasks_per_day": 100})
    assert [(grant["group"], grant["role"], grant["max_tasks_per_day"]) for grant in document["grants"]] == [
        (group_id, "submit", 100)
    ]
    assert document["grants"][0]["group_name"].startswith("lab")

    _task_ids(_submit(bob, endpoint_id, _function(bob)))
    carol_function = _function(carol)
    assert _submit(carol, endpoint_id, carol_function).status_code == 403
    listed = {item["endpoint_id"]: item for item in bob.http.get("/v1/endpoints").json()["endpoints"]}
    assert listed[endpoint_id]["role"] == "submit"

    # membership changes take effect on the next submit, with no change to the endpoint's sharing
    assert alice.http.post(f"/v1/groups/{group_id}/members", json={"user": carol.username}).status_code == 201
    _task_ids(_submit(carol, endpoint_id, carol_function))
    assert alice.http.delete(f"/v1/groups/{group_id}/members/{bob.username}").status_code == 204
    refused = _submit(bob, endpoint_id, _function(bob))
    assert refused.status_code == 403 and _code(refused) == "FORBIDDEN"
    assert endpoint_id not in {item["endpoint_id"] for item in bob.http.get("/v1/endpoints").json()["endpoints"]}

    # deleting the group deletes its grant
    assert alice.http.delete(f"/v1/groups/{group_id}").status_code == 204
    assert _submit(carol, endpoint_id, carol_function).status_code == 403
    assert alice.http.get(f"/v1/endpoints/{endpoint_id}/access").json()["grants"] == []


def test_the_strongest_role_of_a_user_s_own_and_group_grants_wins(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    endpoint_id = alice.register_endpoint("roles")["endpoint_id"]
    group_id = _group(alice, bob)
    _share(alice, endpoint_id, {"user": bob.username, "max_waiting_tasks": 1}, {"group": group_id, "role": "manage"})
    assert bob.http.get(f"/v1/endpoints/{endpoint_id}/access").status_code == 200  # manage, through the group
    _task_ids(_submit(bob, endpoint_id, _function(bob), 3))  # the manage grant has no limit
    assert bob.endpoint(endpoint_id)["role"] == "manage"
