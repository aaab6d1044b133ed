"""What a user may see on the dashboard: their own objects and, once sharing exists, those shared
with them. One function per kind, so the access model (sharing, groups) extends them in one place;
every page lists through these, never through a store query of its own."""

from __future__ import annotations

import dataclasses
from typing import Generic, TypeVar

from taskfabric.forwarder.records import EndpointRecord, FunctionRecord, Identity
from taskfabric.forwarder.service import Forwarder

__all__ = ["Visible", "visible_endpoints", "visible_functions"]

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Visible(Generic[_T]):
    """The user's own objects, and those shared with them (empty until sharing exists)."""

    mine: list[_T]
    shared: list[_T]


async def visible_endpoints(forwarder: Forwarder, identity: Identity) -> Visible[EndpointRecord]:
    """Endpoints `identity` may see, with this replica's freshest status reports."""
    return Visible(mine=await forwarder.endpoints.list(identity), shared=[])


async def visible_functions(forwarder: Forwarder, identity: Identity) -> Visible[FunctionRecord]:
    """The user's functions, and other users' functions shared with them (or public)."""
    views = await forwarder.functions.list(identity, shared=True)
    mine = [view.record for view in views if view.record.owner_id == identity.user_id]
    shared = [view.record for view in views if view.record.owner_id != identity.user_id]
    return Visible(mine=mine, shared=shared)
