"""Groups' rules (forwarder/groups.py) as tables, and the client's group-name resolution."""

from __future__ import annotations

import uuid

import pytest

from taskfabric.client.client import resolve_group_name
from taskfabric.errors import InvalidRequest, NotFoundError, PermissionDenied, ServiceError
from taskfabric.forwarder.access import GroupRole
from taskfabric.forwarder.groups import (
    GROUP_MANAGER_REQUIRED,
    GROUP_OWNER_FIXED,
    GROUP_OWNER_REQUIRED,
    INVALID_GROUP_NAME,
    INVALID_GROUP_ROLE,
    MEMBER_NOT_FOUND,
    check_delete,
    check_group_name,
    check_remove_member,
    check_set_member,
    parse_member_role,
)

OWNER, MANAGER, MEMBER = GroupRole.OWNER, GroupRole.MANAGER, GroupRole.MEMBER


@pytest.mark.parametrize(
    ("actor", "current", "new", "refused"),
    [
        (OWNER, None, MEMBER, None),
        (OWNER, None, MANAGER, None),
        (OWNER, MEMBER, MANAGER, None),
        (OWNER, MANAGER, MEMBER, None),
        (OWNER, OWNER, MEMBER, GROUP_OWNER_FIXED),
        (MANAGER, None, MEMBER, None),
        (MANAGER, MEMBER, MEMBER, None),
        (MANAGER, None, MANAGER, GROUP_OWNER_REQUIRED),
        (MANAGER, MEMBER, MANAGER, GROUP_OWNER_REQUIRED),
        (MANAGER, MANAGER, MEMBER, GROUP_OWNER_REQUIRED),
        (MANAGER, OWNER, MEMBER, GROUP_OWNER_FIXED),
        (MEMBER, None, MEMBER, GROUP_MANAGER_REQUIRED),
        (MEMBER, MEMBER, MANAGER, GROUP_MANAGER_REQUIRED),
    ],
)
def test_who_may_add_members_and_change_roles(
    actor: GroupRole, current: GroupRole | None, new: GroupRole, refused: str | None
) -> None:
    if refused is None:
        check_set_member(actor, current, new)
        return
    with pytest.raises(PermissionDenied) as caught:
        check_set_member(actor, current, new)
    assert caught.value.code == refused


@pytest.mark.parametrize(
    ("actor", "target", "self_removal", "refused"),
    [
        (OWNER, MEMBER, False, None),
        (OWNER, MANAGER, False, None),
        (OWNER, OWNER, True, GROUP_OWNER_FIXED),
        (OWNER, None, False, MEMBER_NOT_FOUND),
        (MANAGER, MEMBER, False, None),
        (MANAGER, MANAGER, False, GROUP_OWNER_REQUIRED),
        (MANAGER, MANAGER, True, None),
        (MANAGER, OWNER, False, GROUP_OWNER_FIXED),
        (MANAGER, None, False, MEMBER_NOT_FOUND),
        (MEMBER, MEMBER, True, None),
        (MEMBER, MEMBER, False, GROUP_MANAGER_REQUIRED),
        (MEMBER, None, False, GROUP_MANAGER_REQUIRED),
        (MEMBER, OWNER, False, GROUP_OWNER_FIXED),
    ],
)
def test_who_may_remove_members(
    actor: GroupRole, target: GroupRole | None, self_removal: bool, refused: str | None
) -> None:
    if refused is None:
        check_remove_member(actor, target, self_removal=self_removal)
        return
    with pytest.raises(ServiceError) as caught:
        check_remove_member(actor, target, self_removal=self_removal)
    assert caught.value.code == refused
    assert caught.value.status == (404 if refused == MEMBER_NOT_FOUND else 403)


def test_only_the_owner_deletes_a_group() -> None:
    check_delete(OWNER)
    for actor in (MANAGER, MEMBER):
        with pytest.raises(PermissionDenied) as caught:
            check_delete(actor)
        assert caught.value.code == GROUP_OWNER_REQUIRED


@pytest.mark.parametrize("name", ["lab", "Lab-2", "a.b@c_d", "x" * 128])
def test_group_names_accepted(name: str) -> None:
    assert check_group_name(name) == name


@pytest.mark.parametrize("name", ["", " lab", "lab!", "-lab", "x" * 129, "a b", str(uuid.uuid4()), "lab\n"])
def test_group_names_refused_with_a_code(name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_group_name(name)
    assert caught.value.code == INVALID_GROUP_NAME


def test_a_member_role_is_member_or_manager() -> None:
    assert parse_member_role("member") is MEMBER
    assert parse_member_role("manager") is MANAGER
    for bad in ("owner", "admin", ""):
        with pytest.raises(InvalidRequest) as caught:
            parse_member_role(bad)
        assert caught.value.code == INVALID_GROUP_ROLE


def _group(name: str, owner: str = "alice") -> dict[str, str]:
    return {"group_id": str(uuid.uuid4()), "name": name, "owner": owner}


def test_resolve_group_by_name_or_id() -> None:
    lab, other = _group("lab"), _group("other")
    assert resolve_group_name("lab", [lab, other]) == uuid.UUID(lab["group_id"])
    some_id = uuid.uuid4()
    assert resolve_group_name(str(some_id), [lab]) == some_id  # an id is taken as it is
    assert resolve_group_name(some_id, []) == some_id


def test_resolve_group_unknown_or_ambiguous_name_is_a_clear_error() -> None:
    mine, bobs = _group("lab"), _group("lab", owner="bob")
    with pytest.raises(NotFoundError) as unknown:
        resolve_group_name("lab", [_group("other")])
    assert unknown.value.code == "GROUP_NOT_FOUND"
    assert "'lab'" in str(unknown.value)
    with pytest.raises(InvalidRequest) as ambiguous:
        resolve_group_name("lab", [mine, bobs])
    assert ambiguous.value.code == "AMBIGUOUS_GROUP"
    assert mine["group_id"] in str(ambiguous.value)
    assert bobs["group_id"] in str(ambiguous.value)
