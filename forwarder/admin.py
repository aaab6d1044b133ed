"""Administration on the store directly (no server needed): local users and their tokens, and
the dead letters the forwarder keeps (re-queueing one also needs the broker).

These are the plain functions behind `taskfabric admin ...`; tests call them directly.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from typing import Any

from taskfabric.errors import ProtocolError, TaskfabricError
from taskfabric.forwarder.auth.tokens import hash_token, new_token
from taskfabric.forwarder.records import DeadLetterRecord, TaskStatus, UserRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store, StoreConflict
from taskfabric.protocol import MESSAGE_TYPES, Message, ResultBatch, TaskBatch, unpack

__all__ = [
    "DeadLetterDetails",
    "create_token",
    "create_user",
    "list_dead_letters",
    "list_users",
    "purge_dead_letters",
    "requeue_dead_letter",
    "revoke_tokens",
    "show_dead_letter",
]

log = logging.getLogger(__name__)

#: how long a re-queue waits for the broker's confirm
_REQUEUE_CONFIRM_S = 30.0

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def create_user(settings: ForwarderSettings, name: str) -> UserRecord:
    """Add a local user; `TaskfabricError` if the name is taken."""
    if not _USERNAME_RE.fullmatch(name):
        raise TaskfabricError(
            f"invalid user name {name[:80]!r}: use 1-64 letters, digits and . _ @ -, starting with a letter or digit"
        )
    with Store.open(settings.store_url) as store:
        try:
            return store.users.create(name, auth="local")
        except StoreConflict:
            raise TaskfabricError(f"a local user named {name!r} already exists") from None


def create_token(settings: ForwarderSettings, name: str, *, description: str = "") -> str:
    """A new token for local user `name`. The token is returned once and stored only as a hash."""
    with Store.open(settings.store_url) as store:
        user = _local_user(store, name)
        token = new_token()
        store.users.add_token(user.user_id, hash_token(token), description=description[:256])
    return token


def revoke_tokens(settings: ForwarderSettings, name: str, *, token: str | None = None) -> int:
    """Delete `token` of local user `name` or, with `token=None`, all of that user's tokens; returns
    how many were deleted. A running forwarder stops accepting a revoked token within a minute
    (it remembers accepted tokens for at most `auth.cache_max_age_s`, capped at 60 s)."""
    with Store.open(settings.store_url) as store:
        user = _local_user(store, name)
        if token is None:
            return store.users.delete_tokens(user.user_id)
        deleted = store.users.delete_tokens(user.user_id, token_hash=hash_token(token.strip()))
    if deleted == 0:
        raise TaskfabricError(f"that token is not one of {name!r}'s tokens (nothing was revoked)")
    return deleted


def list_users(settings: ForwarderSettings) -> list[UserRecord]:
    """Every user (local and Globus) with its number of local tokens."""
    with Store.open(settings.store_url) as store:
        return store.users.list()


def _local_user(store: Store, name: str) -> UserRecord:
    user = store.users.find(name, auth="local")
    if user is None:
        raise TaskfabricError(f"no local user named {name!r}; create it with: taskfabric admin create-user {name}")
    return user


# --- dead letters -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterDetails:
    """A kept dead letter, the current status of its task (None: no task, or no longer stored)
    and what its message holds (`summary`: ids and sizes, never payload bytes)."""

    record: DeadLetterRecord
    task_status: TaskStatus | None
    summary: dict[str, Any]


def list_dead_letters(settings: ForwarderSettings, *, limit: int = 100) -> list[DeadLetterRecord]:
    """The newest kept dead letters first, at most `limit` (bodies left out)."""
    if limit < 1:
        raise TaskfabricError(f"--limit must be at least 1, not {limit}")
    with Store.open(settings.store_url) as store:
        return store.dead_letters.list(limit=limit)


def show_dead_letter(settings: ForwarderSettings, dead_letter_id: str) -> DeadLetterDetails:
    """One kept dead letter with its task's status and a summary of its message."""
    with Store.open(settings.store_url) as store:
        record = _dead_letter(store, dead_letter_id)
        task = store.tasks.get_many([record.task_id]).get(record.task_id) if record.task_id else None
    return DeadLetterDetails(record, task.status if task else None, _summary(record.body or b""))


def requeue_dead_letter(settings: ForwarderSettings, dead_letter_id: str) -> uuid.UUID:
    """Publish the kept task message again to its endpoint's task queue and forget the entry;
    returns the task id. Refused (`TaskfabricError`) for an entry without a task, a task that has
    finished (or is no longer stored), or an endpoint that no longer exists."""
    from taskfabric.forwarder.broker import AdminBrokerLink  # the broker only for this command

    with Store.open(settings.store_url) as store:
        record = _dead_letter(store, dead_letter_id)
        if record.task_id is None or record.body is None:
            raise TaskfabricError(f"dead letter {dead_letter_id} names no task of ours: nothing to re-queue")
        task = store.tasks.get_many([record.task_id]).get(record.task_id)
        if task is None:
            raise TaskfabricError(f"task {record.task_id} is no longer stored: not re-queued")
        if task.status.terminal:
            raise TaskfabricError(f"task {record.task_id} has finished ({task.status}): not re-queued")
        endpoint = store.endpoints.get(task.endpoint_id)
        if endpoint is None:
            raise TaskfabricError(f"the endpoint {task.endpoint_id} of task {record.task_id} no longer exists")
        if not isinstance(_decoded(record.body), TaskBatch):
            raise TaskfabricError(f"dead letter {dead_letter_id} does not hold a task message: not re-queued")
        broker = AdminBrokerLink(settings)
        try:
            broker.start()
            queues = broker.queues_of(endpoint.endpoint_id, endpoint.queue_secret)
            (confirm,) = broker.publish_task_messages(queues, [record.body])
            confirm.result(timeout=_REQUEUE_CONFIRM_S)
        finally:
            broker.close()
        store.dead_letters.delete(record.dead_letter_id)
    log.info("re-queued task %s (dead letter %s)", record.task_id, record.dead_letter_id)
    return record.task_id


def purge_dead_letters(settings: ForwarderSettings, *, before: float | None = None) -> int:
    """Delete the kept dead letters (those kept before `before`, seconds since the epoch, when
    given); returns how many."""
    with Store.open(settings.store_url) as store:
        return store.dead_letters.purge(before=before)


def _dead_letter(store: Store, dead_letter_id: str) -> DeadLetterRecord:
    try:
        key = uuid.UUID(dead_letter_id.strip())
    except ValueError:
        raise TaskfabricError(f"{dead_letter_id[:80]!r} is not a dead letter id (a UUID)") from None
    record = store.dead_letters.get(key)
    if record is None:
        raise TaskfabricError(f"no dead letter {key} (see: taskfabric admin dead-letters list)")
    return record


def _decoded(body: bytes) -> Message | ProtocolError:
    try:
        return unpack(body)
    except ProtocolError as exc:
        return exc


def _summary(body: bytes) -> dict[str, Any]:
    message = _decoded(body)
    if isinstance(message, ProtocolError):
        return {"kind": "undecodable", "bytes": len(body), "error": str(message)}
    kind = next((tag for tag, cls in MESSAGE_TYPES.items() if cls is type(message)), type(message).__name__)
    summary: dict[str, Any] = {"kind": kind, "bytes": len(body)}
    if isinstance(message, TaskBatch):
        summary["client_python"] = message.client_python
        summary["functions"] = [str(body.function_id) for body in message.functions]
        summary["tasks"] = [
            {
                "task_id": str(task.task_id),
                "function_id": str(task.function_id),
                "payload_bytes": len(task.payload),
                "walltime_s": task.walltime_s,
            }
            for task in message.tasks
        ]
    elif isinstance(message, ResultBatch):
        summary["results"] = [{"task_id": str(result.task_id), "ok": result.ok} for result in message.results]
    return summary
