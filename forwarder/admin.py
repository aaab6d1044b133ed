"""Administration on the store directly (no server needed): local users and their tokens, and
the dead letters the forwarder keeps (re-queueing one also needs the broker; disabling and
deleting users need the broker's management API, to cut off their endpoints). Every user and
token change is written to the audit log (`forwarder/audit.py`).

These are the plain functions behind `taskfabric admin ...`; tests call them directly.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import re
import time
import uuid
from typing import Any

from taskfabric.broker_config import ManagementClient
from taskfabric.errors import ErrorCode, ProtocolError, TaskfabricError
from taskfabric.forwarder.audit import LOCAL_PEER, AuditLog
from taskfabric.forwarder.auth.tokens import hash_token, new_token
from taskfabric.forwarder.records import DeadLetterRecord, TaskStatus, TokenRecord, UserRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Failure, Store, StoreConflict
from taskfabric.protocol import MESSAGE_TYPES, Message, ResultBatch, TaskBatch, unpack

__all__ = [
    "TOKEN_SHOWN_CHARS",
    "DeadLetterDetails",
    "UserShutdown",
    "create_token",
    "create_user",
    "delete_user",
    "disable_user",
    "enable_user",
    "list_dead_letters",
    "list_tokens",
    "list_users",
    "parse_duration",
    "purge_dead_letters",
    "requeue_dead_letter",
    "revoke_tokens",
    "show_dead_letter",
]

log = logging.getLogger(__name__)

#: how long a re-queue waits for the broker's confirm
_REQUEUE_CONFIRM_S = 30.0

_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
#: characters of a new token kept as its prefix: "tf_" and 5 of its 43 random ones (30 of 256 bits)
TOKEN_SHOWN_CHARS = 8


def create_user(settings: ForwarderSettings, name: str) -> UserRecord:
    """Add a local user; `TaskfabricError` if the name is taken."""
    if not _USERNAME_RE.fullmatch(name):
        raise TaskfabricError(
            f"invalid user name {name[:80]!r}: use 1-64 letters, digits and . _ @ -, starting with a letter or digit"
        )
    with Store.open(settings.store_url) as store:
        try:
            record = store.users.create(name, auth="local")
        except StoreConflict:
            raise TaskfabricError(f"a local user named {name!r} already exists") from None
    _audit(settings, "create_user", f"user:{name}")
    return record


def create_token(
    settings: ForwarderSettings, name: str, *, description: str = "", expires_in_s: float | None = None
) -> str:
    """A new token for local user `name`, valid for `expires_in_s` seconds (None: until revoked).
    The token is returned once and stored only as a hash, with its first characters as a prefix
    that tells tokens apart in `list_tokens` (too short to be of use to anyone)."""
    if expires_in_s is not None and expires_in_s <= 0:
        raise TaskfabricError(f"--expires-in must be positive, not {expires_in_s:g} seconds")
    with Store.open(settings.store_url) as store:
        user = _local_user(store, name)
        token = new_token()
        expires_at = time.time() + expires_in_s if expires_in_s is not None else None
        record = store.users.add_token(
            user.user_id,
            hash_token(token),
            description=description[:256],
            prefix=token[:TOKEN_SHOWN_CHARS],
            expires_at=expires_at,
        )
    _audit(settings, "create_token", f"user:{name} token:{record.token_id}")
    return token


def list_tokens(settings: ForwarderSettings, name: str) -> list[TokenRecord]:
    """The tokens of local user `name`: id, prefix, label, created, expiry and last use."""
    with Store.open(settings.store_url) as store:
        return store.users.list_tokens(_local_user(store, name).user_id)


def revoke_tokens(
    settings: ForwarderSettings, name: str, *, token: str | None = None, token_id: str | None = None
) -> int:
    """Delete `token` (or the token with id `token_id`) of local user `name` or, with neither,
    all of that user's tokens; returns how many were deleted. A running forwarder refuses a revoked
    token, and closes the results streams opened with it, within its auth cache period
    (`auth.cache_max_age_s`, capped at 60 s)."""
    with Store.open(settings.store_url) as store:
        user = _local_user(store, name)
        if token is not None:
            deleted = store.users.delete_tokens(user.user_id, token_hash=hash_token(token.strip()))
        elif token_id is not None:
            deleted = store.users.delete_tokens(user.user_id, token_id=token_id.strip())
        else:
            deleted = store.users.delete_tokens(user.user_id)
    which = "all" if token is None and token_id is None else (token_id or "by value")
    _audit(settings, "revoke_token", f"user:{name} token:{which}", outcome="ok" if deleted else "NOT_FOUND")
    if deleted == 0 and (token is not None or token_id is not None):
        raise TaskfabricError(f"that token is not one of {name!r}'s tokens (nothing was revoked)")
    return deleted


def list_users(settings: ForwarderSettings) -> list[UserRecord]:
    """Every user (local and Globus) with its number of local tokens."""
    with Store.open(settings.store_url) as store:
        return store.users.list()


@dataclasses.dataclass(frozen=True, slots=True)
class UserShutdown:
    """What disabling or deleting a user did: endpoints whose broker users were deleted (and
    their connections closed), and the user's unfinished tasks failed."""

    user: UserRecord
    endpoints: int
    failed_tasks: int


def disable_user(settings: ForwarderSettings, name: str, *, auth: str = "local") -> UserShutdown:
    """Disable a user: its tokens are refused (403 `USER_DISABLED`), its results streams closed
    (within the auth cache period), its endpoints' broker users deleted (the broker closes their
    connections; re-registering after `enable_user` issues new ones) and its unfinished tasks
    failed with `USER_DISABLED`. Needs the broker's management API."""
    with Store.open(settings.store_url) as store:
        user = _user_named(store, name, auth)
        store.users.set_disabled(user.user_id, at=time.time())
        shutdown = _shut_down(settings, store, user, ErrorCode.USER_DISABLED, "disabled")
    _audit(settings, "disable_user", f"user:{name}")
    return shutdown


def enable_user(settings: ForwarderSettings, name: str, *, auth: str = "local") -> UserRecord:
    """Accept a disabled user's tokens again (its endpoints must register again)."""
    with Store.open(settings.store_url) as store:
        user = _user_named(store, name, auth)
        store.users.set_disabled(user.user_id, at=None)
    _audit(settings, "enable_user", f"user:{name}")
    return user


def delete_user(settings: ForwarderSettings, name: str, *, auth: str = "local") -> UserShutdown:
    """Delete a user with its tokens, functions and endpoints: as `disable_user` (broker users
    deleted, connections closed, unfinished tasks failed with `USER_DELETED`), then the rows (with
    its groups, memberships and the grants naming it or its groups, in one transaction).
    The endpoints' queues are left to the broker's operator (`rabbitmqctl list_queues`): a running
    forwarder stops consuming them within `endpoint_sync_period_s`."""
    with Store.open(settings.store_url) as store:
        user = _user_named(store, name, auth)
        store.users.set_disabled(user.user_id, at=time.time())  # refused at once, even if deleting fails
        shutdown = _shut_down(settings, store, user, ErrorCode.USER_DELETED, "deleted")
        store.users.delete(user.user_id)
    _audit(settings, "delete_user", f"user:{name}")
    return shutdown


def _shut_down(settings: ForwarderSettings, store: Store, user: UserRecord, code: ErrorCode, what: str) -> UserShutdown:
    """Delete the broker users of `user`'s endpoints (closing their connections) and fail its
    unfinished tasks with `code`."""
    failure = Failure(code.value, f"user {user.username!r} was {what} by an administrator before the task finished")
    failed = store.tasks.fail_owner(user.user_id, failure, now=time.time())
    endpoints = store.endpoints.list(user.user_id)
    if endpoints:
        management = ManagementClient(
            settings.broker_management_urls, vhost=settings.vhost, ssl_context=settings.management_ssl_context
        )
        try:
            for endpoint in endpoints:
                management.delete_user(endpoint.broker_username)  # the broker closes its connections
                management.close_connections_of(endpoint.broker_username, reason=f"user {what}")
        finally:
            management.close()
    log.info("%s user %s: %d endpoint(s) cut off, %d task(s) failed", what, user.username, len(endpoints), len(failed))
    return UserShutdown(user, len(endpoints), len(failed))


def parse_duration(text: str) -> float:
    """Seconds from `30d`, `12h`, `90m`, `45s` or a plain number of seconds (`TaskfabricError`
    naming the text otherwise)."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise TaskfabricError(f"{text[:40]!r} is not a duration: use e.g. 30d, 12h, 90m or 3600s")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def _local_user(store: Store, name: str) -> UserRecord:
    user = store.users.find(name, auth="local")
    if user is None:
        raise TaskfabricError(f"no local user named {name!r}; create it with: taskfabric admin create-user {name}")
    return user


def _user_named(store: Store, name: str, auth: str) -> UserRecord:
    if auth not in ("local", "globus"):
        raise TaskfabricError(f"--auth must be 'local' or 'globus', not {auth[:20]!r}")
    user = store.users.find(name, auth=auth)
    if user is None:
        raise TaskfabricError(f"no {auth} user named {name!r} (see: taskfabric admin list-users)")
    return user


def _audit(settings: ForwarderSettings, action: str, target: str, *, outcome: str = "ok") -> None:
    with AuditLog(settings.audit_log_path) as audit:
        audit.record(action, user=_operator(), peer=LOCAL_PEER, object=target, outcome=outcome)


def _operator() -> str:
    """Who ran the admin command: the local account."""
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"admin:uid {os.getuid()}"


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
        task = store.tasks.get_many([record.task_id], results=False).get(record.task_id) if record.task_id else None
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
        task = store.tasks.get_many([record.task_id], results=False).get(record.task_id)
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
