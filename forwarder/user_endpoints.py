"""Multi-user endpoints, the forwarder's part: routing a user's tasks to their own user endpoint.

DESIGN (isolation; see also endpoint_agent/multi_user/__init__.py and docs/endpoint-owner.md).
A multi-user endpoint (registered with metadata `multi_user: true`) is a *parent*: its agent runs
privileged on the resource, consumes no tasks and only reads its control queue. Sharing
(`forwarder/access.py`) decides who may submit to it; the endpoint's identity mapping decides as
whom the tasks run. For each (parent, submitting user, user_endpoint_config) the forwarder keeps a
*user endpoint*: an ordinary endpoint record with its own queues and its own broker user
`ep-<id>`, owned by the parent's owner, whose id is derived (uuid5) from the three, so every
replica names the same one. The user's tasks are stored and published under the user endpoint,
never in the parent's queue; the user endpoint's broker user may read only those queues, so the
process started for one user (running as that user's local account, with credentials its tasks
can read) can never receive, nor answer, another user's tasks: results are stored only for tasks
of the endpoint whose broker user published them (`TaskTable.store_results`).

After publishing, the forwarder sends the parent a `StartUserEndpoint` (at most once per
`START_COMMAND_PERIOD_S` per user endpoint). While the user endpoint reports online the command
carries no credentials: re-keying its broker user would leave the running process with a stale
password for its next reconnect. Otherwise its broker user is keyed afresh (without closing a live
connection) and the command carries that access. The parent starts the process when it is not
running (first task, idle-stopped, or crashed; with the last access it was given when the command
has none) and otherwise only keeps the access for the next start. Refusals (no mapping, root, a
denied account, an invalid config) are the parent's: it answers the waiting tasks itself with the
user endpoint's access (typed errors naming the endpoint) and starts nothing.

Deleting the parent deletes its user endpoints (their queues, broker users and unfinished tasks).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from taskfabric.forwarder.records import EndpointRecord, Identity

__all__ = [
    "MAX_USER_ENDPOINTS_PER_USER",
    "START_COMMAND_PERIOD_S",
    "UserEndpointKey",
    "config_digest",
    "is_multi_user",
    "parent_of",
    "user_endpoint_id",
    "user_endpoint_metadata",
    "user_endpoint_name",
    "user_of",
]

#: a parent hears about one user endpoint at most this often (each command re-keys its broker user)
START_COMMAND_PERIOD_S = 1.0
_METADATA_PARENT = "multi_user_parent"
#: user endpoints (distinct user_endpoint_configs) one user may have on one parent: each is an
#: endpoint record, queues, a broker user and a process on the resource
MAX_USER_ENDPOINTS_PER_USER = 8


def is_multi_user(record: EndpointRecord) -> bool:
    """Whether the endpoint registered as a multi-user (parent) endpoint."""
    return bool(_metadata(record).get("multi_user"))


def parent_of(record: EndpointRecord) -> uuid.UUID | None:
    """The parent of a user endpoint; None for any other endpoint."""
    value = _metadata(record).get(_METADATA_PARENT)
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def user_of(record: EndpointRecord) -> uuid.UUID | None:
    """The submitting user a user endpoint serves; None for any other endpoint."""
    value = _metadata(record).get("user_id")
    try:
        return uuid.UUID(value) if isinstance(value, str) and parent_of(record) is not None else None
    except ValueError:
        return None


def config_digest(user_endpoint_config: dict[str, Any] | None) -> str:
    """A stable digest of a user_endpoint_config (key order does not matter)."""
    text = json.dumps(user_endpoint_config or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class UserEndpointKey:
    """What names one user endpoint: the parent, the submitter and their config."""

    __slots__ = ("config", "digest", "identity_sub", "parent_id", "user_id", "username")

    def __init__(self, parent_id: uuid.UUID, identity: Identity, config: dict[str, Any] | None) -> None:
        self.parent_id = parent_id
        self.user_id = identity.user_id
        self.username = identity.username
        #: a Globus user's id is their identity's `sub` (forwarder/auth/globus.py)
        self.identity_sub = str(identity.user_id) if identity.auth == "globus" else ""
        self.config = config or {}
        self.digest = config_digest(config)


def user_endpoint_id(key: UserEndpointKey) -> uuid.UUID:
    return uuid.uuid5(key.parent_id, f"user:{key.user_id}:{key.digest}")


def user_endpoint_name(parent: EndpointRecord, key: UserEndpointKey) -> str:
    """Unique among the owner's endpoint names (the user id and digest make it so)."""
    return f"{parent.name}~{key.user_id.hex[:12]}~{key.digest[:8]}"


def user_endpoint_metadata(key: UserEndpointKey) -> str:
    return json.dumps(
        {
            _METADATA_PARENT: str(key.parent_id),
            "user": key.username,
            "user_id": str(key.user_id),
            "config_digest": key.digest,
            "created_at": time.time(),
        },
        separators=(",", ":"),
    )


def _metadata(record: EndpointRecord) -> dict[str, Any]:
    try:
        data = json.loads(record.metadata or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
