"""Function registration and sharing: opaque bodies, one id per (owner, content hash).

A function is private to its owner unless shared (`forwarder/access.py` decides). Anyone allowed
may run it by id and read its metadata; only the owner reads its body, deletes it or changes its
sharing. A user who may not see a function gets 404, exactly as for an unknown id; one who may see
it but not do this gets 403.

Submits ask `FunctionSharing.check_runnable` for other users' functions (a user's own pass on the
owner cache of `TaskService`, with no extra read). It caches a function's sharing for
`SHARING_CACHE_S`: a change made through this replica forgets the function's entry at once
(revoking refuses at once here); other replicas may accept tasks for up to `SHARING_CACHE_S` after
a revocation. A user's groups are never cached here: a membership change counts at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Collection, Sequence

from taskfabric.errors import InvalidRequest, NotFoundError, PermissionDenied
from taskfabric.forwarder.access import FunctionAccess, Principal, PrincipalKind, function_readable
from taskfabric.forwarder.batching import FunctionBodyCache
from taskfabric.forwarder.principals import user_principal
from taskfabric.forwarder.records import FunctionRecord, Identity
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.store.access import AuditEvent
from taskfabric.forwarder.ttl_cache import TTLCache

__all__ = [
    "FORBIDDEN",
    "FUNCTION_ACCESS_ACTION",
    "GROUP_NOT_FOUND",
    "NOT_FOUND",
    "SHARING_CACHE_S",
    "FunctionGrantRequest",
    "FunctionRegistry",
    "FunctionSharing",
    "FunctionView",
    "content_hash",
]

FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
GROUP_NOT_FOUND = "GROUP_NOT_FOUND"
FUNCTION_ACCESS_ACTION = "function.access"
#: how long a replica reuses a function's sharing and a user's groups at submit
SHARING_CACHE_S = 2.0
#: grants per function (a document larger than this is a mistake, not a use)
MAX_FUNCTION_GRANTS = 1000


def content_hash(body: bytes) -> str:
    """The sha256 hex digest identifying a body."""
    return hashlib.sha256(body).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionView:
    """A function as a caller sees it: its record and its owner's username."""

    record: FunctionRecord
    owner: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionGrantRequest:
    """One grant as asked for: a user name (username or id) or a group id; `InvalidRequest`
    (400 `INVALID_GRANT`) unless exactly one is given."""

    user: str | None = None
    group: uuid.UUID | None = None

    def __post_init__(self) -> None:
        if (self.user is None) == (self.group is None):
            raise InvalidRequest("grants: each grant names exactly one of 'user' or 'group'", code="INVALID_GRANT")


class FunctionSharing:
    """Who may run which function: the decision at submit, with a short per-replica cache of
    each function's sharing. A user's groups are read afresh whenever a decision needs them (a
    group grant), so a membership change counts at once."""

    def __init__(self, store: Store, runner: StoreRunner, *, cache_s: float = SHARING_CACHE_S) -> None:
        self._store = store
        self._runner = runner
        self._access: TTLCache[uuid.UUID, FunctionAccess] = TTLCache(cache_s, max_entries=10_000)

    def forget(self, function_id: uuid.UUID) -> None:
        """The function's sharing changed (or it was deleted): decide afresh at once."""
        self._access.discard(function_id)

    async def access(self, function_id: uuid.UUID) -> FunctionAccess | None:
        cached = self._access.get(function_id)
        if cached is None:
            cached = await self._runner.read(self._store.access.function_access, function_id)
            if cached is not None:
                self._access.put(function_id, cached)
        return cached

    async def readable(self, identity: Identity, function_id: uuid.UUID) -> bool:
        """Whether the caller may run the function and read its metadata (False: unknown too)."""
        access = await self.access(function_id)
        if access is None:
            return False
        if function_readable(access, identity.user_id, ()):  # the owner, public, or a grant to the user
            return True
        if not any(grant.principal.kind is PrincipalKind.GROUP for grant in access.grants):
            return False
        group_ids = await self._runner.read(self._store.access.group_ids_of, identity.user_id)
        return function_readable(access, identity.user_id, group_ids)

    async def check_runnable(self, identity: Identity, function_ids: Collection[uuid.UUID]) -> None:
        """404 for a function the caller may not run (unknown, or private to another user)."""
        for function_id in sorted(function_ids, key=str):
            if not await self.readable(identity, function_id):
                raise NotFoundError(f"no function {function_id} (or it is not shared with you)", code=NOT_FOUND)


class FunctionRegistry:
    """Register, read, list, share and delete functions."""

    def __init__(
        self, store: Store, runner: StoreRunner, cache: FunctionBodyCache, sharing: FunctionSharing | None = None
    ) -> None:
        self._store = store
        self._runner = runner
        self._cache = cache
        self.sharing = sharing or FunctionSharing(store, runner)

    async def register(
        self,
        identity: Identity,
        *,
        name: str,
        body: bytes,
        python_version: str,
        description: str | None = None,
        public: bool | None = None,
    ) -> tuple[FunctionRecord, bool]:
        """(record, created): the same body registered again by its owner returns the first id
        (a `description` or `public` given then replaces the stored one). A registration that
        changes the public flag is a sharing change: audited as `function.access`."""
        digest = content_hash(body)
        known = None
        if public is not None:  # only then may sharing change: what it was, for the audit
            known = await self._runner.read(self._store.functions.find_by_hash, identity.user_id, digest)
        record, created = await self._runner.write(
            self._store.functions.add,
            owner_id=identity.user_id,
            name=name,
            body=body,
            content_hash=digest,
            python_version=python_version,
            description=description,
            public=public,
        )
        if not created:
            self.sharing.forget(record.function_id)
        was_public = known.public if known is not None else False
        if public is not None and record.public != was_public:
            await self._audit_public(identity, record, was_public=was_public)
        return record, created

    async def _audit_public(self, identity: Identity, record: FunctionRecord, *, was_public: bool) -> None:
        access = await self._runner.read(self._store.access.function_access, record.function_id)
        grants = [grant.principal for grant in access.grants] if access is not None else []
        event = AuditEvent(
            action=FUNCTION_ACCESS_ACTION,
            actor_id=identity.user_id,
            function_id=record.function_id,
            detail={
                "before": _principals_detail(was_public, grants),
                "after": _principals_detail(record.public, grants),
                "via": "registration",
            },
        )
        await self._runner.write(self._store.access.record, [event])

    async def get(self, identity: Identity, function_id: uuid.UUID, *, include_body: bool = False) -> FunctionRecord:
        """The caller's own function (404 unknown or unseen, 403 seen but another user's)."""
        record = await self._runner.read(self._store.functions.get, function_id, include_body=include_body)
        return await self._owned(identity, function_id, record)

    async def describe(self, identity: Identity, function_id: uuid.UUID, *, include_body: bool = False) -> FunctionView:
        """A function the caller may see, with its owner's name; the body for its owner only."""
        record = await self._runner.read(self._store.functions.get, function_id, include_body=include_body)
        if record is None or not await self._visible(identity, record):
            raise _not_found(function_id)
        if record.owner_id == identity.user_id:
            return FunctionView(record, identity.username)
        if include_body:
            raise PermissionDenied(
                f"only the owner of function {function_id} may read its body (you may run it by id)", code=FORBIDDEN
            )
        return FunctionView(record, await self._username(record.owner_id))

    async def list(self, identity: Identity, *, shared: bool = False) -> list[FunctionView]:
        """The caller's functions; with `shared`, then the functions shared with them."""
        mine = await self._runner.read(self._store.functions.list, identity.user_id)
        views = [FunctionView(record, identity.username) for record in mine]
        if shared:
            group_ids = await self._runner.read(self._store.access.group_ids_of, identity.user_id)
            others = await self._runner.read(self._store.function_access.shared_with, identity.user_id, group_ids)
            views.extend(FunctionView(record, owner) for record, owner in others)
        return views

    async def delete(self, identity: Identity, function_id: uuid.UUID) -> None:
        await self.get(identity, function_id)
        await self._runner.write(self._store.functions.delete, function_id)
        self._cache.discard(function_id)
        self.sharing.forget(function_id)

    # --- sharing ------------------------------------------------------------------------

    async def access(self, identity: Identity, function_id: uuid.UUID) -> FunctionAccess:
        """The function's sharing (its owner only)."""
        await self.get(identity, function_id)
        access = await self._runner.read(self._store.access.function_access, function_id)
        if access is None:  # deleted meanwhile
            raise _not_found(function_id)
        return access

    async def set_access(
        self, identity: Identity, function_id: uuid.UUID, *, public: bool, grants: Sequence[FunctionGrantRequest]
    ) -> FunctionAccess:
        """Replace the function's sharing (its owner only); returns the new one."""
        if len(grants) > MAX_FUNCTION_GRANTS:
            raise InvalidRequest(
                f"grants: {len(grants)} grants, above the limit of {MAX_FUNCTION_GRANTS}", code="INVALID_GRANT"
            )
        before = await self.access(identity, function_id)
        principals = [await self._principal(grant) for grant in grants]
        event = AuditEvent(
            action=FUNCTION_ACCESS_ACTION,
            actor_id=identity.user_id,
            at=time.time(),
            function_id=function_id,
            detail={"before": access_detail(before), "after": _principals_detail(public, principals)},
        )
        await self._runner.write(
            self._store.function_access.set_function_access,
            function_id,
            public=public,
            principals=principals,
            actor_id=identity.user_id,
            event=event,
        )
        self.sharing.forget(function_id)
        return await self.access(identity, function_id)

    async def _principal(self, grant: FunctionGrantRequest) -> Principal:
        if grant.user is not None:
            principal, _ = await user_principal(self._runner, self._store, grant.user)
            return principal
        assert grant.group is not None
        known = await self._runner.read(self._store.function_access.existing_groups, [grant.group])
        if grant.group not in known:
            raise NotFoundError(f"no group {grant.group}", code=GROUP_NOT_FOUND)
        return Principal(PrincipalKind.GROUP, grant.group)

    async def usernames(self, user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        """user id -> username, for the ids that exist (to show grants)."""
        found: dict[uuid.UUID, str] = {}
        for user_id in set(user_ids):
            record = await self._runner.read(self._store.users.get, user_id)
            if record is not None:
                found[user_id] = record.username
        return found

    # --- helpers ------------------------------------------------------------------------

    async def _visible(self, identity: Identity, record: FunctionRecord) -> bool:
        if record.owner_id == identity.user_id or record.public:
            return True
        return await self.sharing.readable(identity, record.function_id)

    async def _owned(self, identity: Identity, function_id: uuid.UUID, record: FunctionRecord | None) -> FunctionRecord:
        if record is None or not await self._visible(identity, record):
            raise _not_found(function_id)
        if record.owner_id != identity.user_id:
            raise PermissionDenied(f"function {function_id} belongs to another user", code=FORBIDDEN)
        return record

    async def _username(self, user_id: uuid.UUID) -> str:
        return (await self.usernames([user_id])).get(user_id, "")


def _not_found(function_id: uuid.UUID) -> NotFoundError:
    return NotFoundError(f"no function {function_id}", code=NOT_FOUND)


def access_detail(access: FunctionAccess) -> dict[str, object]:
    """A function's sharing as audit detail (ids only)."""
    return _principals_detail(access.public, [grant.principal for grant in access.grants])


def _principals_detail(public: bool, principals: Sequence[Principal]) -> dict[str, object]:
    return {
        "public": public,
        "grants": sorted(f"{principal.kind.value}:{principal.principal_id}" for principal in set(principals)),
    }
