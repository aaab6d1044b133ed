"""The access model's rules (forwarder/access.py): roles from grants, groups and public flags."""

from __future__ import annotations

import uuid

from taskfabric.forwarder.access import (
    EndpointAccess,
    EndpointGrant,
    EndpointRole,
    FunctionAccess,
    FunctionGrant,
    GrantLimits,
    Principal,
    PrincipalKind,
    endpoint_role,
    function_allowed,
    function_readable,
)

ALICE, BOB, CAROL = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
LAB = uuid.uuid4()
ENDPOINT, FUNCTION = uuid.uuid4(), uuid.uuid4()


def user(user_id: uuid.UUID) -> Principal:
    return Principal(PrincipalKind.USER, user_id)


def group(group_id: uuid.UUID) -> Principal:
    return Principal(PrincipalKind.GROUP, group_id)


def test_the_owner_may_do_everything_and_strangers_nothing() -> None:
    access = EndpointAccess(endpoint_id=ENDPOINT, owner_id=ALICE)
    owner = endpoint_role(access, ALICE, [])
    assert owner is not None and owner.is_owner and owner.role.may_manage
    assert endpoint_role(access, CAROL, []) is None


def test_a_group_grant_reaches_its_members_only() -> None:
    access = EndpointAccess(
        endpoint_id=ENDPOINT, owner_id=ALICE, grants=(EndpointGrant(principal=group(LAB), role=EndpointRole.SUBMIT),)
    )
    bob = endpoint_role(access, BOB, [LAB])
    assert bob is not None and bob.role is EndpointRole.SUBMIT and not bob.role.may_manage
    assert endpoint_role(access, CAROL, [uuid.uuid4()]) is None


def test_the_strongest_role_wins_with_the_most_generous_limits_of_that_role() -> None:
    access = EndpointAccess(
        endpoint_id=ENDPOINT,
        owner_id=ALICE,
        grants=(
            EndpointGrant(principal=user(BOB), role=EndpointRole.SUBMIT, limits=GrantLimits(max_waiting_tasks=1)),
            EndpointGrant(principal=group(LAB), role=EndpointRole.MANAGE, limits=GrantLimits(max_tasks_per_day=5)),
        ),
    )
    bob = endpoint_role(access, BOB, [LAB])
    assert bob is not None and bob.role is EndpointRole.MANAGE
    assert bob.limits == GrantLimits(max_waiting_tasks=None, max_tasks_per_day=5)
    same_role = EndpointAccess(
        endpoint_id=ENDPOINT,
        owner_id=ALICE,
        grants=(
            EndpointGrant(principal=user(BOB), role=EndpointRole.SUBMIT, limits=GrantLimits(max_tasks_per_day=3)),
            EndpointGrant(principal=group(LAB), role=EndpointRole.SUBMIT, limits=GrantLimits(max_tasks_per_day=7)),
        ),
    )
    loosest = endpoint_role(same_role, BOB, [LAB])
    assert loosest is not None and loosest.limits.max_tasks_per_day == 7


def test_public_endpoints_let_everyone_submit_and_explicit_grants_keep_their_limits() -> None:
    access = EndpointAccess(
        endpoint_id=ENDPOINT,
        owner_id=ALICE,
        public=True,
        grants=(EndpointGrant(principal=user(BOB), role=EndpointRole.SUBMIT, limits=GrantLimits(max_waiting_tasks=2)),),
    )
    carol = endpoint_role(access, CAROL, [])
    assert carol is not None and carol.role is EndpointRole.SUBMIT and not carol.limits.any
    bob = endpoint_role(access, BOB, [])
    assert bob is not None and bob.limits.max_waiting_tasks == 2


def test_functions_are_private_unless_shared_or_public() -> None:
    private = FunctionAccess(function_id=FUNCTION, owner_id=ALICE)
    assert function_readable(private, ALICE, [])
    assert not function_readable(private, BOB, [LAB])
    shared = FunctionAccess(function_id=FUNCTION, owner_id=ALICE, grants=(FunctionGrant(principal=group(LAB)),))
    assert function_readable(shared, BOB, [LAB]) and not function_readable(shared, CAROL, [])
    assert function_readable(FunctionAccess(function_id=FUNCTION, owner_id=ALICE, public=True), CAROL, [])


def test_the_allow_list_binds_everyone_and_none_means_any_function() -> None:
    assert function_allowed(EndpointAccess(endpoint_id=ENDPOINT, owner_id=ALICE), FUNCTION)
    listed = EndpointAccess(endpoint_id=ENDPOINT, owner_id=ALICE, allowed_functions=frozenset({FUNCTION}))
    assert function_allowed(listed, FUNCTION) and not function_allowed(listed, uuid.uuid4())
