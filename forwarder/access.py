"""The access model: who may use an endpoint or run a function besides its owner.

Plain rules on plain values (no store, no HTTP), so that every route decides the same way and unit
tests need nothing running. The store reads an object's `EndpointAccess` / `FunctionAccess` and a
user's group ids; these functions decide.

- An endpoint's owner may do everything with it. Others get what their grants give them: a grant
  names a user or a group (`Principal`) and a role, `submit` (run tasks, see one's own tasks on
  it) or `manage` (also change its sharing and allow-list, see everyone's tasks on it and its
  audit). A `public` endpoint lets every authenticated user submit. When several grants apply
  (the user's own and their groups'), the strongest role wins, and each per-grant limit is the
  most generous among the grants giving that role (no limit beats any number).
- A function is private to its owner unless shared with users or groups or made `public`. Those
  allowed may run it by id and read its metadata; only the owner reads its body or deletes it.
- An endpoint's `allowed_functions` (None: any) is checked after the above, for everyone, owner
  included: the allow-list protects the resource, not the user.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Collection, Iterable

__all__ = [
    "GRANTABLE_ENDPOINT_ROLES",
    "NO_LIMITS",
    "EndpointAccess",
    "EndpointGrant",
    "EndpointPermission",
    "EndpointRole",
    "FunctionAccess",
    "FunctionGrant",
    "GrantLimits",
    "GroupRole",
    "Principal",
    "PrincipalKind",
    "endpoint_role",
    "function_allowed",
    "function_readable",
]


class PrincipalKind(enum.StrEnum):
    USER = "user"
    GROUP = "group"


class EndpointRole(enum.StrEnum):
    """What someone may do with an endpoint, weakest first."""

    SUBMIT = "submit"
    MANAGE = "manage"
    OWNER = "owner"  # never granted: only the registering user has it

    @property
    def rank(self) -> int:
        return _ENDPOINT_RANK[self]

    @property
    def may_manage(self) -> bool:
        """Change sharing and the allow-list, see every user's tasks and the audit."""
        return self.rank >= _ENDPOINT_RANK[EndpointRole.MANAGE]


_ENDPOINT_RANK = {EndpointRole.SUBMIT: 1, EndpointRole.MANAGE: 2, EndpointRole.OWNER: 3}

#: the roles a grant may give
GRANTABLE_ENDPOINT_ROLES = (EndpointRole.SUBMIT, EndpointRole.MANAGE)


class GroupRole(enum.StrEnum):
    """A member's role in a group: managers add and remove members (not owners); the owner also
    deletes the group and names managers."""

    MEMBER = "member"
    MANAGER = "manager"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _GROUP_RANK[self]


_GROUP_RANK = {GroupRole.MEMBER: 1, GroupRole.MANAGER: 2, GroupRole.OWNER: 3}


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """A user or a group, by store id."""

    kind: PrincipalKind
    principal_id: uuid.UUID


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrantLimits:
    """Per-grant limits (None: no limit of the grant's own; the site's quotas still apply)."""

    max_waiting_tasks: int | None = None
    max_tasks_per_day: int | None = None

    @property
    def any(self) -> bool:
        return self.max_waiting_tasks is not None or self.max_tasks_per_day is not None


NO_LIMITS = GrantLimits()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointGrant:
    principal: Principal
    role: EndpointRole
    limits: GrantLimits = NO_LIMITS
    granted_at: float = 0.0
    granted_by: uuid.UUID | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointAccess:
    """An endpoint's sharing as stored: its owner, whether it is public, its grants and the
    functions it runs (None: any)."""

    endpoint_id: uuid.UUID
    owner_id: uuid.UUID
    public: bool = False
    grants: tuple[EndpointGrant, ...] = ()
    allowed_functions: frozenset[uuid.UUID] | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointPermission:
    """What one user may do with one endpoint: a role and the limits that come with it."""

    role: EndpointRole
    limits: GrantLimits = NO_LIMITS

    @property
    def is_owner(self) -> bool:
        return self.role is EndpointRole.OWNER


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionGrant:
    principal: Principal
    granted_at: float = 0.0
    granted_by: uuid.UUID | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionAccess:
    function_id: uuid.UUID
    owner_id: uuid.UUID
    public: bool = False
    grants: tuple[FunctionGrant, ...] = ()


def _principals_of(user_id: uuid.UUID, group_ids: Collection[uuid.UUID]) -> set[Principal]:
    mine = {Principal(PrincipalKind.USER, user_id)}
    mine.update(Principal(PrincipalKind.GROUP, group_id) for group_id in group_ids)
    return mine


def endpoint_role(
    access: EndpointAccess, user_id: uuid.UUID, group_ids: Collection[uuid.UUID]
) -> EndpointPermission | None:
    """What `user_id` (a member of `group_ids`) may do with the endpoint; None: nothing."""
    if access.owner_id == user_id:
        return EndpointPermission(role=EndpointRole.OWNER)
    mine = _principals_of(user_id, group_ids)
    applying = [grant for grant in access.grants if grant.principal in mine]
    if not applying:
        return EndpointPermission(role=EndpointRole.SUBMIT) if access.public else None
    best = max(grant.role.rank for grant in applying)
    strongest = [grant for grant in applying if grant.role.rank == best]
    return EndpointPermission(role=strongest[0].role, limits=_most_generous(grant.limits for grant in strongest))


def _most_generous(limits: Iterable[GrantLimits]) -> GrantLimits:
    waiting: list[int | None] = []
    daily: list[int | None] = []
    for limit in limits:
        waiting.append(limit.max_waiting_tasks)
        daily.append(limit.max_tasks_per_day)
    return GrantLimits(max_waiting_tasks=_loosest(waiting), max_tasks_per_day=_loosest(daily))


def _loosest(values: list[int | None]) -> int | None:
    if not values or any(value is None for value in values):
        return None
    return max(value for value in values if value is not None)


def function_readable(access: FunctionAccess, user_id: uuid.UUID, group_ids: Collection[uuid.UUID]) -> bool:
    """Whether the user may run the function by id and read its metadata (the owner, anyone it is
    shared with directly or through a group, everyone when public)."""
    if access.owner_id == user_id or access.public:
        return True
    mine = _principals_of(user_id, group_ids)
    return any(grant.principal in mine for grant in access.grants)


def function_allowed(access: EndpointAccess, function_id: uuid.UUID) -> bool:
    """Whether the endpoint's allow-list lets it run the function (None: every function)."""
    return access.allowed_functions is None or function_id in access.allowed_functions
