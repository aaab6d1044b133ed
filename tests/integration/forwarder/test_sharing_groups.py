"""Groups (issue 13 item 1) over HTTP on a real forwarder (SQLite and PostgreSQL): create, list,
show, add, remove, delete; the roles enforced; another user's group is 404; membership is what
the access model reads at once; bad input is 4xx with a code; deleting a group (or a user)
deletes the grants naming it; every change lands in the sharing audit."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from click.testing import CliRunner
from sqlalchemy import select

from taskfabric.cli import main
from taskfabric.client import Client
from taskfabric.forwarder.admin import delete_user
from taskfabric.forwarder.store.schema import endpoint_grants, function_grants, sharing_audit
from taskfabric.forwarder.testing import ForwarderApi
from taskfabric.testing import unique_name

Users = Callable[[Any], ForwarderApi]


def _user_id(api: ForwarderApi) -> uuid.UUID:
    return uuid.UUID(api.http.get("/v1/whoami").json()["user_id"])


def _create(api: ForwarderApi, name: str | None = None, **fields: Any) -> dict[str, Any]:
    response = api.http.post("/v1/groups", json={"name": name or unique_name("lab"), **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _add(api: ForwarderApi, group_id: str, user: str, role: str = "member") -> httpx.Response:
    return api.http.post(f"/v1/groups/{group_id}/members", json={"user": user, "role": role})


def _remove(api: ForwarderApi, group_id: str, user: str) -> httpx.Response:
    return api.http.delete(f"/v1/groups/{group_id}/members/{user}")


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def _members(api: ForwarderApi, group_id: str) -> dict[str, str]:
    response = api.http.get(f"/v1/groups/{group_id}")
    assert response.status_code == 200, response.text
    return {member["username"]: member["role"] for member in response.json()["members"]}


def test_create_list_show_add_remove_delete(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    name = unique_name("lab")
    created = _create(alice, name, description="the lab")
    group_id = created["group_id"]
    assert created["name"] == name and created["description"] == "the lab"
    assert created["owner"] == alice.username and created["role"] == "owner" and created["member_count"] == 1
    assert [(m["username"], m["role"]) for m in created["members"]] == [(alice.username, "owner")]

    added = _add(alice, group_id, bob.username)
    assert added.status_code == 201, added.text
    assert added.json()["username"] == bob.username and added.json()["role"] == "member"
    assert added.json()["user_id"] == str(_user_id(bob))

    (listed,) = bob.http.get("/v1/groups").json()["groups"]
    assert listed["group_id"] == group_id and listed["role"] == "member" and listed["owner"] == alice.username
    assert listed["member_count"] == 2
    assert alice.http.get("/v1/groups").json()["groups"][0]["role"] == "owner"
    shown = bob.http.get(f"/v1/groups/{group_id}").json()
    assert shown["role"] == "member"
    assert [(m["username"], m["role"]) for m in shown["members"]] == [
        (alice.username, "owner"),
        (bob.username, "member"),
    ]

    # the owner names a manager: the same call changes the role (200)
    promoted = _add(alice, group_id, bob.username, "manager")
    assert promoted.status_code == 200 and promoted.json()["role"] == "manager"
    assert _members(alice, group_id)[bob.username] == "manager"

    assert _remove(alice, group_id, bob.username).status_code == 204
    assert bob.http.get("/v1/groups").json()["groups"] == []
    _refused(_remove(alice, group_id, bob.username), 404, "MEMBER_NOT_FOUND")

    assert alice.http.delete(f"/v1/groups/{group_id}").status_code == 204
    assert alice.http.get("/v1/groups").json()["groups"] == []
    _refused(alice.http.get(f"/v1/groups/{group_id}"), 404, "GROUP_NOT_FOUND")
    _refused(alice.http.delete(f"/v1/groups/{group_id}"), 404, "GROUP_NOT_FOUND")


def test_roles_owner_manager_member_are_enforced(forwarder: Any, users: Users) -> None:
    alice, bob, carol, dave = (users(forwarder) for _ in range(4))
    group_id = _create(alice)["group_id"]
    assert _add(alice, group_id, bob.username, "manager").status_code == 201
    assert _add(alice, group_id, carol.username).status_code == 201

    # a manager adds and removes members...
    assert _add(bob, group_id, dave.username).status_code == 201
    assert _remove(bob, group_id, dave.username).status_code == 204
    # ...but not managers, nor the owner, and does not delete the group
    _refused(_add(bob, group_id, dave.username, "manager"), 403, "GROUP_OWNER_REQUIRED")
    _refused(_add(bob, group_id, carol.username, "manager"), 403, "GROUP_OWNER_REQUIRED")
    _refused(_remove(bob, group_id, alice.username), 403, "GROUP_OWNER_FIXED")
    _refused(_add(bob, group_id, alice.username), 403, "GROUP_OWNER_FIXED")
    _refused(bob.http.delete(f"/v1/groups/{group_id}"), 403, "GROUP_OWNER_REQUIRED")
    # a member changes nothing but may leave
    _refused(_add(carol, group_id, dave.username), 403, "GROUP_MANAGER_REQUIRED")
    _refused(_remove(carol, group_id, bob.username), 403, "GROUP_MANAGER_REQUIRED")
    _refused(carol.http.delete(f"/v1/groups/{group_id}"), 403, "GROUP_OWNER_REQUIRED")
    assert _remove(carol, group_id, carol.username).status_code == 204
    # the owner cannot be removed, not even by themselves: only the group deleted
    _refused(_remove(alice, group_id, alice.username), 403, "GROUP_OWNER_FIXED")
    _refused(_add(alice, group_id, alice.username, "member"), 403, "GROUP_OWNER_FIXED")
    _refused(_add(alice, group_id, dave.username, "owner"), 400, "INVALID_GROUP_ROLE")
    # the owner demotes and removes managers
    assert _add(alice, group_id, bob.username, "member").status_code == 200
    assert _members(alice, group_id) == {alice.username: "owner", bob.username: "member"}
    assert _remove(alice, group_id, bob.username).status_code == 204
    assert _members(alice, group_id) == {alice.username: "owner"}


def test_another_users_group_is_not_found_and_unchanged(forwarder: Any, users: Users) -> None:
    alice, bob, carol = users(forwarder), users(forwarder), users(forwarder)
    group_id = _create(alice)["group_id"]
    assert _add(alice, group_id, bob.username).status_code == 201
    for response in (
        carol.http.get(f"/v1/groups/{group_id}"),
        carol.http.delete(f"/v1/groups/{group_id}"),
        _add(carol, group_id, carol.username),
        _add(carol, group_id, bob.username, "manager"),
        _remove(carol, group_id, bob.username),
        _remove(carol, group_id, alice.username),
    ):
        _refused(response, 404, "GROUP_NOT_FOUND")
    # the same answer as for a group that does not exist: nothing tells them apart
    _refused(carol.http.get(f"/v1/groups/{uuid.uuid4()}"), 404, "GROUP_NOT_FOUND")
    assert carol.http.get("/v1/groups").json()["groups"] == []
    assert _members(alice, group_id) == {alice.username: "owner", bob.username: "member"}


def test_membership_is_what_the_access_model_reads_at_once(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    bob_id = _user_id(bob)
    first, second = _create(alice)["group_id"], _create(alice)["group_id"]
    with forwarder.store() as store:
        assert store.access.group_ids_of(bob_id) == frozenset()
        assert _add(alice, first, bob.username).status_code == 201
        assert store.access.group_ids_of(bob_id) == {uuid.UUID(first)}
        assert _add(alice, second, str(bob_id)).status_code == 201  # a user named by id
        assert store.access.group_ids_of(bob_id) == {uuid.UUID(first), uuid.UUID(second)}
        assert _remove(alice, first, str(bob_id)).status_code == 204
        assert store.access.group_ids_of(bob_id) == {uuid.UUID(second)}
        assert alice.http.delete(f"/v1/groups/{second}").status_code == 204
        assert store.access.group_ids_of(bob_id) == frozenset()
        assert store.access.group_ids_of(_user_id(alice)) == {uuid.UUID(first)}


def test_bad_group_requests_are_4xx_with_codes(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    name = unique_name("lab")
    group_id = _create(alice, name)["group_id"]
    _refused(alice.http.post("/v1/groups", json={"name": name}), 409, "GROUP_NAME_TAKEN")
    assert bob.http.post("/v1/groups", json={"name": name}).status_code == 201  # names are per owner
    for bad in ("", "has space", "x" * 129, str(uuid.uuid4()), "-lead", "lab\u0000"):
        _refused(alice.http.post("/v1/groups", json={"name": bad}), 400, "INVALID_GROUP_NAME")
    _refused(
        alice.http.post("/v1/groups", json={"name": unique_name("d"), "description": "x" * 1001}),
        400,
        "INVALID_GROUP_DESCRIPTION",
    )
    _refused(alice.http.post("/v1/groups", json={}), 422, "INVALID_REQUEST")
    _refused(alice.http.post("/v1/groups", json={"name": 7}), 422, "INVALID_REQUEST")
    _refused(
        alice.http.post("/v1/groups", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "INVALID_REQUEST",
    )
    _refused(_add(alice, group_id, unique_name("nobody")), 404, "USER_NOT_FOUND")
    _refused(_add(alice, group_id, bob.username, "admin"), 400, "INVALID_GROUP_ROLE")
    _refused(_add(alice, group_id, ""), 400, "INVALID_USER_NAME")
    _refused(alice.http.post(f"/v1/groups/{group_id}/members", json={"role": "member"}), 422, "INVALID_REQUEST")
    _refused(_remove(alice, group_id, unique_name("nobody")), 404, "USER_NOT_FOUND")
    for path in ("/v1/groups/not-a-uuid", "/v1/groups/not-a-uuid/members/x"):
        response = alice.http.get(path) if path.count("/") == 3 else alice.http.delete(path)
        assert 400 <= response.status_code < 500 and response.json()["error"]["code"], response.text
    assert _members(alice, group_id) == {alice.username: "owner"}


def test_deleting_a_group_deletes_its_grants_in_one_go(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    alice_id, bob_id = _user_id(alice), _user_id(bob)
    endpoint_id = uuid.UUID(alice.register_endpoint(unique_name("ep"))["endpoint_id"])
    function_id = uuid.UUID(alice.register_function(b"body" + uuid.uuid4().bytes))
    doomed, kept = uuid.UUID(_create(alice)["group_id"]), uuid.UUID(_create(alice)["group_id"])
    now = time.time()
    with forwarder.store() as store:
        with store.engine.begin() as connection:
            for kind, principal in (("group", doomed), ("group", kept), ("user", bob_id)):
                common = {"principal_kind": kind, "principal_id": principal, "granted_at": now, "granted_by": alice_id}
                connection.execute(endpoint_grants.insert().values(endpoint_id=endpoint_id, role="submit", **common))
                connection.execute(function_grants.insert().values(function_id=function_id, **common))
        assert alice.http.delete(f"/v1/groups/{doomed}").status_code == 204
        endpoint_access = store.access.endpoint_access(endpoint_id)
        function_access = store.access.function_access(function_id)
        assert endpoint_access is not None and function_access is not None
        left = {grant.principal.principal_id for grant in endpoint_access.grants}
        assert left == {kept, bob_id}
        assert {grant.principal.principal_id for grant in function_access.grants} == {kept, bob_id}
        deleted = _audit_of_group(store, doomed)["group.delete"]
        assert deleted["detail"]["grants_deleted"] == 2


def test_every_group_change_is_in_the_sharing_audit(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    alice_id, bob_id = _user_id(alice), _user_id(bob)
    group_id = _create(alice)["group_id"]
    assert _add(alice, group_id, bob.username).status_code == 201
    assert _remove(alice, group_id, bob.username).status_code == 204
    assert alice.http.delete(f"/v1/groups/{group_id}").status_code == 204
    with forwarder.store() as store:
        events = _audit_of_group(store, uuid.UUID(group_id))
    assert set(events) == {"group.create", "group.add_member", "group.remove_member", "group.delete"}
    assert all(event["actor_id"] == alice_id for event in events.values())
    assert events["group.add_member"]["detail"] == {"user_id": str(bob_id), "username": bob.username, "role": "member"}
    assert events["group.remove_member"]["detail"]["user_id"] == str(bob_id)


def test_deleting_a_user_deletes_their_groups_memberships_and_grants(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    alice_id, bob_id = _user_id(alice), _user_id(bob)
    alices_group = _create(alice)["group_id"]
    assert _add(alice, alices_group, bob.username, "manager").status_code == 201
    bobs_group = uuid.UUID(_create(bob)["group_id"])
    endpoint_id = uuid.UUID(alice.register_endpoint(unique_name("ep"))["endpoint_id"])
    now = time.time()
    with forwarder.store() as store:
        with store.engine.begin() as connection:
            for kind, principal in (("user", bob_id), ("group", bobs_group), ("group", uuid.UUID(alices_group))):
                connection.execute(
                    endpoint_grants.insert().values(
                        endpoint_id=endpoint_id,
                        principal_kind=kind,
                        principal_id=principal,
                        role="submit",
                        granted_at=now,
                        granted_by=alice_id,
                    )
                )
        delete_user(forwarder.settings, bob.username)
        assert store.access.group_ids_of(bob_id) == frozenset()
        assert store.groups.get(bobs_group) is None
        access = store.access.endpoint_access(endpoint_id)
        assert access is not None
        assert [grant.principal.principal_id for grant in access.grants] == [uuid.UUID(alices_group)]
    assert _members(alice, alices_group) == {alice.username: "owner"}


def test_group_cli_names_groups_by_name(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    runner = CliRunner(env={"TASKFABRIC_URL": forwarder.url, "TASKFABRIC_TOKEN": alice.token})
    name = unique_name("lab")

    def run(*args: str) -> Any:
        return runner.invoke(main, ["group", *args], catch_exceptions=False)

    created = run("create", name, "--description", "the lab")
    assert created.exit_code == 0 and name in created.output, created.output
    assert run("add", name, bob.username, "--role", "manager").exit_code == 0
    (listed,) = json.loads(run("list", "--json").output)
    assert listed["name"] == name and listed["role"] == "owner" and listed["member_count"] == 2
    shown = json.loads(run("show", name, "--json").output)
    assert {member["username"]: member["role"] for member in shown["members"]}[bob.username] == "manager"
    assert bob.username in run("show", name).output
    assert run("remove", name, bob.username).exit_code == 0
    unknown = runner.invoke(main, ["group", "show", unique_name("nope")])
    assert unknown.exit_code != 0 and "no group named" in unknown.output
    assert run("delete", name, "--yes").exit_code == 0
    assert json.loads(run("list", "--json").output) == []
    with Client(forwarder.url, bob.token) as client:
        assert client.list_groups() == []


def _audit_of_group(store: Any, group_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """The group's audit events by action (each action once in these tests)."""
    query = select(sharing_audit).where(sharing_audit.c.group_id == group_id)
    with store.engine.connect() as connection:
        rows = connection.execute(query).all()
    return {row.action: {"actor_id": row.actor_id, "detail": json.loads(row.detail)} for row in rows}
