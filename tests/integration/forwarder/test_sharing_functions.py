"""Function sharing and endpoint allow-lists through a real forwarder, broker and store (SQLite and
PostgreSQL): a function shared with bob runs by id on bob's endpoint, while its body and deletion
stay alice's; carol, a stranger, cannot even see it; a public function is readable by anyone;
an endpoint's allow-list refuses other functions at submit (its owner's too); the new routes refuse
other users and bad input with 4xx; sharing changes are audited."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
from sqlalchemy import select

from taskfabric.client import Client, Executor, PermissionDenied
from taskfabric.forwarder.store.schema import sharing_audit
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def _register(api: ForwarderApi, body: bytes, **fields: Any) -> dict[str, Any]:
    import base64

    response = api.http.post(
        "/v1/functions",
        json={"name": "shared-f", "body": base64.b64encode(body).decode(), "python_version": "3.11.7", **fields},
    )
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


def _share(api: ForwarderApi, function_id: str, *, public: bool = False, grants: list[dict[str, str]]) -> Any:
    return api.http.put(f"/v1/functions/{function_id}/access", json={"public": public, "grants": grants})


def _submit(api: ForwarderApi, endpoint_id: str, function_id: str) -> Any:
    return api.http.post(
        f"/v1/endpoints/{endpoint_id}/tasks", json={"tasks": [{"function_id": function_id, "payload": "eA=="}]}
    )


def _audit(running: Any, *, action: str, function_id: str | None = None, endpoint_id: str | None = None) -> list[Any]:
    with running.store() as store, store.engine.connect() as connection:
        query = select(sharing_audit).where(sharing_audit.c.action == action)
        if function_id is not None:
            query = query.where(sharing_audit.c.function_id == uuid.UUID(function_id))
        if endpoint_id is not None:
            query = query.where(sharing_audit.c.endpoint_id == uuid.UUID(endpoint_id))
        return list(connection.execute(query).all())


def test_bob_runs_alices_shared_function_by_id_but_cannot_read_or_delete_it(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    registered = _register(alice, b"alice's shared " + uuid.uuid4().bytes, description="squares numbers")
    function_id = registered["function_id"]
    bobs_lab = bob.register_endpoint("bobs-lab")
    bobs_endpoint = bobs_lab["endpoint_id"]

    # private: bob and carol cannot see it at all (as for an unknown id)
    assert _submit(bob, bobs_endpoint, function_id).status_code == 404
    assert bob.http.get(f"/v1/functions/{function_id}").status_code == 404

    shared = _share(alice, function_id, grants=[{"user": bob.username}])
    assert shared.status_code == 200, shared.text
    (grant,) = shared.json()["grants"]
    assert grant["user"] == bob.username
    assert grant["user_id"] == bob.http.get("/v1/whoami").json()["user_id"]
    assert grant["granted_at"] > 0
    assert shared.json()["owner"] == alice.username
    assert shared.json()["public"] is False

    # bob: metadata yes (name, description, owner, python version), body and deletion no
    info = bob.http.get(f"/v1/functions/{function_id}")
    assert info.status_code == 200, info.text
    metadata = info.json()
    assert metadata["owner"] == alice.username
    assert metadata["description"] == "squares numbers"
    assert metadata["python_version"] == "3.11.7"
    assert metadata["name"] == "shared-f"
    assert "body" not in metadata or metadata["body"] is None
    body = bob.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"})
    assert body.status_code == 403
    assert body.json()["error"]["code"] == "FORBIDDEN"
    assert "only the owner" in body.json()["error"]["message"]
    assert bob.http.delete(f"/v1/functions/{function_id}").status_code == 403
    assert bob.http.get(f"/v1/functions/{function_id}/access").status_code == 403
    assert _share(bob, function_id, grants=[{"user": bob.username}]).status_code == 403

    # bob runs it by id on his own endpoint: the task carries alice's body, its result comes back
    endpoint = fake_endpoints(bobs_lab)
    endpoint.consume_tasks()
    submitted = _submit(bob, bobs_endpoint, function_id)
    assert submitted.status_code == 201, submitted.text
    (task_id,) = submitted.json()["task_ids"]
    wait_until(lambda: uuid.UUID(task_id) in endpoint.task_ids, what="bob's task of alice's function")
    bodies = {body.function_id for batch in endpoint.batches for body in batch.functions}
    assert uuid.UUID(function_id) in bodies
    endpoint.publish_results([Result(task_id=uuid.UUID(task_id), ok=True, value=b"49", worker_python="3.11.9")])
    wait_until(lambda: bob.task(task_id)["status"] == "success", what="the result of bob's task")

    # bob lists it among the functions shared with him, not among his own
    assert bob.http.get("/v1/functions").json()["functions"] == []
    listed = bob.http.get("/v1/functions", params={"shared": "true"}).json()["functions"]
    assert [(entry["function_id"], entry["owner"]) for entry in listed] == [(function_id, alice.username)]

    # carol, a stranger: 404 everywhere, as for an unknown id
    carols_lab = carol.register_endpoint("carols-lab")
    for response in (
        carol.http.get(f"/v1/functions/{function_id}"),
        carol.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"}),
        carol.http.delete(f"/v1/functions/{function_id}"),
        carol.http.get(f"/v1/functions/{function_id}/access"),
        _share(carol, function_id, grants=[]),
        _submit(carol, carols_lab["endpoint_id"], function_id),
    ):
        assert response.status_code == 404, response.text
        assert "squares" not in response.text
    shared_with_carol = carol.http.get("/v1/functions", params={"shared": "true"}).json()["functions"]
    assert function_id not in {entry["function_id"] for entry in shared_with_carol}  # others' public ones may be

    # unsharing refuses bob's next submit at once; alice still owns everything
    assert _share(alice, function_id, grants=[]).status_code == 200
    assert _submit(bob, bobs_endpoint, function_id).status_code == 404
    assert bob.http.get(f"/v1/functions/{function_id}").status_code == 404
    own = alice.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"})
    assert own.status_code == 200
    assert own.json()["body"]
    assert own.json()["owner"] == alice.username

    events = _audit(forwarder, action="function.access", function_id=function_id)
    assert len(events) == 2
    details = [json.loads(event.detail) for event in sorted(events, key=lambda event: event.at)]
    assert details[0]["before"] == {"public": False, "grants": []}
    assert len(details[0]["after"]["grants"]) == 1
    assert details[1]["after"] == {"public": False, "grants": []}


def test_a_public_function_is_readable_and_runnable_by_anyone(forwarder: Any, users: Users) -> None:
    alice, carol = users(forwarder), users(forwarder)
    body = b"alice's public " + uuid.uuid4().bytes
    function_id = _register(alice, body, public=True, description="for everyone")["function_id"]
    info = carol.http.get(f"/v1/functions/{function_id}")
    assert info.status_code == 200, info.text
    assert info.json()["public"] is True
    assert info.json()["owner"] == alice.username
    assert carol.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"}).status_code == 403
    carols_lab = carol.register_endpoint("carols-lab")
    assert _submit(carol, carols_lab["endpoint_id"], function_id).status_code == 201
    listed = carol.http.get("/v1/functions", params={"shared": "true"}).json()["functions"]
    assert function_id in [entry["function_id"] for entry in listed]

    # the same body again keeps its id and its public flag (no `public` sent: keep it)
    again = _register(alice, body)
    assert again["function_id"] == function_id
    assert carol.http.get(f"/v1/functions/{function_id}").status_code == 200
    # made private through the access document: carol no longer sees it
    assert _share(alice, function_id, public=False, grants=[]).status_code == 200
    assert carol.http.get(f"/v1/functions/{function_id}").status_code == 404
    assert _submit(carol, carols_lab["endpoint_id"], function_id).status_code == 404
    # both changes of its public flag are audited: at registration, then through the API
    events = sorted(_audit(forwarder, action="function.access", function_id=function_id), key=lambda e: e.at)
    details = [json.loads(event.detail) for event in events]
    assert [(detail["before"]["public"], detail["after"]["public"]) for detail in details] == [
        (False, True),
        (True, False),
    ]
    assert details[0]["via"] == "registration"


def test_the_allow_list_refuses_unlisted_functions_at_submit(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob = users(forwarder), users(forwarder)
    listed = alice.register_function(b"listed " + uuid.uuid4().bytes)
    unlisted = alice.register_function(b"unlisted " + uuid.uuid4().bytes)
    # the agent's config.yaml list arrives with the registration and comes back in its answer
    registration = alice.register_endpoint("locked-lab", allowed_functions=[listed])
    assert registration["allowed_functions"] == [listed]
    endpoint_id = registration["endpoint_id"]

    assert _submit(alice, endpoint_id, listed).status_code == 201
    refused = _submit(alice, endpoint_id, unlisted)  # the owner too: the list protects the resource
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "FUNCTION_NOT_ALLOWED"
    assert endpoint_id in error["message"]
    assert listed in error["message"]
    assert unlisted in error["message"]

    got = alice.http.get(f"/v1/endpoints/{endpoint_id}/allowed_functions")
    assert got.json() == {"endpoint_id": endpoint_id, "allowed_functions": [listed]}
    # the API changes it at once (this replica) ...
    changed = alice.http.put(f"/v1/endpoints/{endpoint_id}/allowed_functions", json={"allowed_functions": [unlisted]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["allowed_functions"] == [unlisted]
    assert _submit(alice, endpoint_id, unlisted).status_code == 201
    assert _submit(alice, endpoint_id, listed).status_code == 403
    # ... a registration without a list keeps it; one with a list (config.yaml) replaces it
    again = alice.register_endpoint("locked-lab", endpoint_id=endpoint_id)
    assert again["allowed_functions"] == [unlisted]
    again = alice.register_endpoint("locked-lab", endpoint_id=endpoint_id, allowed_functions=[listed])
    assert again["allowed_functions"] == [listed]
    assert _submit(alice, endpoint_id, unlisted).status_code == 403
    # null: any function
    cleared = alice.http.put(f"/v1/endpoints/{endpoint_id}/allowed_functions", json={"allowed_functions": None})
    assert cleared.json()["allowed_functions"] is None
    assert _submit(alice, endpoint_id, unlisted).status_code == 201
    # each re-registration re-keys the endpoint's broker user and closes its connections, so the
    # agent logs in with the last registration's credentials; the accepted tasks wait in its queue
    endpoint = fake_endpoints(again)
    endpoint.consume_tasks()
    wait_until(lambda: len(endpoint.task_ids) == 3, what="the three accepted tasks")

    # strangers: the endpoint's other routes answer 403 for another user's endpoint, so do these
    assert bob.http.get(f"/v1/endpoints/{endpoint_id}/allowed_functions").status_code == 403
    stolen = bob.http.put(f"/v1/endpoints/{endpoint_id}/allowed_functions", json={"allowed_functions": []})
    assert stolen.status_code == 403
    assert alice.http.get(f"/v1/endpoints/{endpoint_id}/allowed_functions").json()["allowed_functions"] is None
    unknown = uuid.uuid4()
    assert alice.http.get(f"/v1/endpoints/{unknown}/allowed_functions").status_code == 404

    events = _audit(forwarder, action="endpoint.allowed_functions", endpoint_id=endpoint_id)
    vias = sorted(json.loads(event.detail)["via"] for event in events)
    assert vias == ["api", "api", "registration", "registration"]


def test_sharing_routes_refuse_bad_input_with_4xx(forwarder: Any, users: Users) -> None:
    alice = users(forwarder)
    function_id = alice.register_function(b"f " + uuid.uuid4().bytes)
    registration = alice.register_endpoint("lab")
    endpoint_id = registration["endpoint_id"]
    access = f"/v1/functions/{function_id}/access"
    allowed = f"/v1/endpoints/{endpoint_id}/allowed_functions"
    cases = {
        400: [
            alice.http.put(access, json={"public": False, "grants": [{}]}),
            alice.http.put(access, json={"public": False, "grants": [{"user": "x", "group": str(uuid.uuid4())}]}),
            alice.http.put(access, content=b"{not json", headers={"Content-Type": "application/json"}),
            alice.http.put("/v1/functions/not-an-id/access", json={"public": False, "grants": []}),
        ],
        404: [
            alice.http.put(access, json={"public": False, "grants": [{"user": f"nobody-{uuid.uuid4()}"}]}),
            alice.http.put(access, json={"public": False, "grants": [{"group": str(uuid.uuid4())}]}),
            alice.http.get(f"/v1/functions/{uuid.uuid4()}/access"),
        ],
        422: [
            alice.http.put(access, json={"public": "sometimes", "grants": []}),
            alice.http.put(access, json={"public": False, "grants": "bob"}),
            alice.http.put(allowed, json={"allowed_functions": ["not-a-function-id"]}),
            alice.http.put(allowed, json={"allowed_functions": "all"}),
            alice.http.put(allowed, json={}),
            alice.http.post("/v1/endpoints", json={"name": "lab2", "allowed_functions": ["nope"]}),
            alice.http.post("/v1/functions", json={"name": "f", "body": "eA==", "description": "x" * 5000}),
        ],
    }
    for status, responses in cases.items():
        for response in responses:
            assert response.status_code == status, (status, response.status_code, response.text)
            assert "error" in response.json()
    assert alice.http.get(access).json() == {
        "function_id": function_id,
        "owner": alice.username,
        "public": False,
        "grants": [],
    }
    assert alice.http.get(allowed).json()["allowed_functions"] is None


def test_the_client_runs_another_users_shared_function_by_id(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    """`Client.run` and `Executor.submit_to_registered_function` take a shared function's id as
    they take one's own: the client does not insist on owning it."""
    alice, bob = users(forwarder), users(forwarder)
    function_id = _register(alice, b"alice's shared " + uuid.uuid4().bytes)["function_id"]
    assert _share(alice, function_id, grants=[{"user": bob.username}]).status_code == 200
    registration = bob.register_endpoint("bobs-lab")
    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()
    with Client(url=forwarder.url, token=bob.token) as client:
        shared = client.list_functions(shared=True)
        assert [(entry["function_id"], entry["owner"]) for entry in shared] == [(function_id, alice.username)]
        assert client.get_function(function_id)["owner"] == alice.username
        with pytest.raises(PermissionDenied):
            client.get_function(function_id, include_body=True)
        with pytest.raises(PermissionDenied):
            client.get_function_access(function_id)
        run_id = client.run(7, endpoint_id=registration["endpoint_id"], function_id=function_id)
        with Executor(registration["endpoint_id"], client=client) as executor:
            future = executor.submit_to_registered_function(function_id, (6,))
            wait_until(lambda: future.task_id is not None, what="the executor's submit")
            assert future.task_id is not None
            wait_until(lambda: {run_id, future.task_id} <= set(endpoint.task_ids), what="both tasks at the endpoint")
            endpoint.publish_results(
                [Result(task_id=future.task_id, ok=True, value=cloudpickle.dumps(36), worker_python="3.11.9")]
            )
            assert future.result(timeout=30) == 36


def test_the_client_shares_and_unshares_a_function(forwarder: Any, users: Users) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    with Client(url=forwarder.url, token=alice.token) as client:
        function_id = client.register_function(_square, description="squares", public=False)
        assert client.get_function(function_id)["description"] == "squares"
        access = client.share_function(function_id, user=bob.username)
        assert [grant["user"] for grant in access["grants"]] == [bob.username]
        access = client.share_function(function_id, user=carol.username, public=True)
        assert sorted(grant["user"] for grant in access["grants"]) == sorted([bob.username, carol.username])
        assert access["public"] is True
        access = client.unshare_function(function_id, user=bob.username, public=False)
        assert [grant["user"] for grant in access["grants"]] == [carol.username]
        assert access["public"] is False
        assert client.get_function_access(function_id) == access
    assert bob.http.get(f"/v1/functions/{function_id}").status_code == 404
    assert carol.http.get(f"/v1/functions/{function_id}").status_code == 200


def _square(x: int) -> int:
    return x * x


def test_the_cli_shares_functions_and_sets_allow_lists(
    sqlite_forwarder: Any, users: Users, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from click.testing import CliRunner

    from taskfabric.cli import main

    alice, bob = users(sqlite_forwarder), users(sqlite_forwarder)
    function_id = _register(alice, b"cli " + uuid.uuid4().bytes, description="for the lab")["function_id"]
    endpoint_id = alice.register_endpoint("cli-lab")["endpoint_id"]
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path))
    monkeypatch.setenv("TASKFABRIC_URL", sqlite_forwarder.url)

    def run(api: ForwarderApi, *args: str) -> Any:
        monkeypatch.setenv("TASKFABRIC_TOKEN", api.token)
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    shared = run(alice, "function", "share", function_id, "--user", bob.username, "--json")
    assert [grant["user"] for grant in shared["grants"]] == [bob.username]
    listed = run(bob, "function", "list", "--shared", "--json")
    # other tests on this session's forwarder make functions public: alice's are what counts here
    from_alice = [(entry["function_id"], entry["owner"]) for entry in listed if entry["owner"] == alice.username]
    assert from_alice == [(function_id, alice.username)]
    shown = run(bob, "function", "show", function_id, "--json")
    assert shown["description"] == "for the lab"
    assert "access" not in shown  # bob does not own it
    assert run(alice, "function", "show", function_id, "--json")["access"]["grants"][0]["user"] == bob.username
    assert run(alice, "function", "unshare", function_id, "--user", bob.username, "--json")["grants"] == []
    assert [
        entry for entry in run(bob, "function", "list", "--shared", "--json") if entry["owner"] == alice.username
    ] == []

    answer = run(alice, "endpoint", "allowed-functions", endpoint_id, "--set", function_id, "--json")
    assert answer == {"endpoint_id": endpoint_id, "allowed_functions": [function_id]}
    assert run(alice, "endpoint", "allowed-functions", "cli-lab", "--json")["allowed_functions"] == [function_id]
    cleared = run(alice, "endpoint", "allowed-functions", endpoint_id, "--clear", "--json")
    assert cleared["allowed_functions"] is None
    monkeypatch.setenv("TASKFABRIC_TOKEN", bob.token)
    refused = CliRunner().invoke(main, ["endpoint", "allowed-functions", endpoint_id, "--clear"])
    assert refused.exit_code == 1
    assert "403" in refused.output


def test_a_function_shared_with_a_group_follows_its_membership_at_once(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    created = alice.http.post("/v1/groups", json={"name": f"lab-{uuid.uuid4().hex[:8]}"})
    assert created.status_code == 201, created.text
    group_id = created.json()["group_id"]
    assert alice.http.post(f"/v1/groups/{group_id}/members", json={"user": bob.username}).status_code in (200, 201)
    function_id = _register(alice, b"group-shared " + uuid.uuid4().bytes)["function_id"]
    shared = _share(alice, function_id, grants=[{"group": group_id}])
    assert shared.status_code == 200, shared.text
    assert shared.json()["grants"][0]["group"] == group_id

    bobs_lab, carols_lab = bob.register_endpoint("bobs-lab"), carol.register_endpoint("carols-lab")
    assert _submit(bob, bobs_lab["endpoint_id"], function_id).status_code == 201
    assert bob.http.get(f"/v1/functions/{function_id}").json()["owner"] == alice.username
    assert bob.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"}).status_code == 403
    assert [
        entry["function_id"] for entry in bob.http.get("/v1/functions", params={"shared": "true"}).json()["functions"]
    ] == [function_id]
    assert _submit(carol, carols_lab["endpoint_id"], function_id).status_code == 404

    # membership changes count at once: bob leaves, carol joins
    assert alice.http.delete(f"/v1/groups/{group_id}/members/{bob.username}").status_code == 204
    assert _submit(bob, bobs_lab["endpoint_id"], function_id).status_code == 404
    assert bob.http.get(f"/v1/functions/{function_id}").status_code == 404
    assert alice.http.post(f"/v1/groups/{group_id}/members", json={"user": carol.username}).status_code in (200, 201)
    assert _submit(carol, carols_lab["endpoint_id"], function_id).status_code == 201
    # deleting the group deletes its grant
    assert alice.http.delete(f"/v1/groups/{group_id}").status_code == 204
    assert _submit(carol, carols_lab["endpoint_id"], function_id).status_code == 404
    assert alice.http.get(f"/v1/functions/{function_id}/access").json()["grants"] == []
    # a group the caller names must exist
    unknown = _share(alice, function_id, grants=[{"group": group_id}])
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "GROUP_NOT_FOUND"


def test_the_client_shares_with_a_group_by_name(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    with Client(url=forwarder.url, token=alice.token) as client:
        group = client.create_group(f"lab-{uuid.uuid4().hex[:8]}")
        client.add_group_member(group["group_id"], bob.username)
        function_id = client.register_function(_square, name="square-for-the-group")
        access = client.share_function(function_id, group=client.resolve_group(group["name"]))
        assert [grant.get("group") for grant in access["grants"]] == [group["group_id"]]
    assert bob.http.get(f"/v1/functions/{function_id}").status_code == 200


def test_a_shared_endpoints_allow_list_binds_its_users_and_its_managers_may_change_it(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    listed = _register(alice, b"listed " + uuid.uuid4().bytes, public=True)["function_id"]
    unlisted = _register(alice, b"unlisted " + uuid.uuid4().bytes, public=True)["function_id"]
    registration = alice.register_endpoint("shared-lab", allowed_functions=[listed])
    endpoint_id = registration["endpoint_id"]
    grants = {"grants": [{"user": bob.username, "role": "submit"}, {"user": carol.username, "role": "manage"}]}
    assert alice.http.put(f"/v1/endpoints/{endpoint_id}/access", json=grants).status_code == 200
    endpoint = fake_endpoints(registration)
    endpoint.consume_tasks()

    # bob submits alice's (public) functions to alice's endpoint: the allow-list applies to him too
    assert _submit(bob, endpoint_id, listed).status_code == 201
    refused = _submit(bob, endpoint_id, unlisted)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "FUNCTION_NOT_ALLOWED"
    # a submitter reads the list but may not change it; a manager may
    path = f"/v1/endpoints/{endpoint_id}/allowed_functions"
    assert bob.http.get(path).json()["allowed_functions"] == [listed]
    assert bob.http.put(path, json={"allowed_functions": None}).status_code == 403
    changed = carol.http.put(path, json={"allowed_functions": [listed, unlisted]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["allowed_functions"] == sorted([listed, unlisted])
    assert _submit(bob, endpoint_id, unlisted).status_code == 201
    wait_until(lambda: len(endpoint.task_ids) == 2, what="bob's two accepted tasks")
    (event,) = [
        json.loads(event.detail)
        for event in _audit(forwarder, action="endpoint.allowed_functions", endpoint_id=endpoint_id)
        if json.loads(event.detail)["via"] == "api"
    ]
    assert event["after"] == sorted([listed, unlisted])
