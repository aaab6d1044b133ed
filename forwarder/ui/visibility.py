"""What a user may see on the dashboard: their own objects and those shared with them (directly,
through a group, or public), with the same rules as the API (forwarder/access.py). One function per
kind; every page lists through these, never through a store query of its own."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Generic, TypeVar

from taskfabric.forwarder.records import EndpointRecord, FunctionRecord, Identity
from taskfabric.forwarder.service import Forwarder

__all__ = ["Visible", "visible_endpoints", "visible_functions"]

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Visible(Generic[_T]):
    """The user's own objects, and those shared with them."""

    mine: list[_T]
    shared: list[_T]
    #: the viewer's role on each shared endpoint ("submit" or "manage"): a submitter sees its
    #: status, not its blocks nor everyone's throughput and failures
    roles: dict[uuid.UUID, str] = dataclasses.field(default_factory=dict)

    def may_manage(self, object_id: uuid.UUID) -> bool:
        """Whether the viewer owns the object or manages it."""
        return self.roles.get(object_id, "manage") == "manage"


async def visible_endpoints(forwarder: Forwarder, identity: Identity) -> Visible[EndpointRecord]:
    """Endpoints `identity` may see (theirs, then those shared with them, with their role), with
    this replica's freshest status reports."""
    pairs = await forwarder.endpoints.list_visible(identity)
    shared = [(record, permission) for record, permission in pairs if not permission.is_owner]
    return Visible(
        mine=[record for record, permission in pairs if permission.is_owner],
        shared=[record for record, _ in shared],
        roles={record.endpoint_id: permission.role.value for record, permission in shared},
    )


async def visible_functions(forwarder: Forwarder, identity: Identity) -> Visible[FunctionRecord]:
    """The user's functions, and other users' functions shared with them (or public)."""
    views = await forwarder.functions.list(identity, shared=True)
    mine = [view.record for view in views if view.record.owner_id == identity.user_id]
    shared = [view.record for view in views if view.record.owner_id != identity.user_id]
    return Visible(mine=mine, shared=shared)
