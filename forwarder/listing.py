"""Listing tasks: the query parameters of `GET /v1/tasks`, its opaque cursors, its items.

Every parameter arrives as text and is checked here by hand, so that a bad one is a 400 naming
it (`InvalidRequest`, code `INVALID_REQUEST`) rather than FastAPI's generic 422. A cursor is the
(created_at, task_id) key of the last task of the previous page, base64url-encoded: opaque to
clients, and only ever used as a bound on the caller's own tasks, so a forged cursor can reveal
nothing (it is still checked, and a malformed one is refused).
"""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Mapping
from typing import Any

from taskfabric.forwarder.records import TaskPage, TaskQuery, TaskStatus, TaskSummary
from taskfabric.forwarder.requests import invalid, parse_uuid

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "decode_cursor",
    "encode_cursor",
    "page_body",
    "parse_task_query",
    "task_summary",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_VERSION = "1"
_MAX_CURSOR_CHARS = 200


def parse_task_query(
    owner_id: uuid.UUID,
    *,
    status: str | None = None,
    endpoint_id: str | None = None,
    function_id: str | None = None,
    group_id: str | None = None,
    since: str | None = None,
    limit: str | None = None,
    cursor: str | None = None,
    all_users: str | None = None,
) -> TaskQuery:
    """The listing the parameters ask for, restricted to `owner_id`'s tasks (with `all_users`,
    every user's tasks on `endpoint_id`, which must be given; the caller checks the right)."""
    everyone = _flag(all_users, "all_users")
    if everyone and not endpoint_id:
        raise invalid("all_users: needs endpoint_id (every user's tasks on one endpoint you own or manage)")
    return TaskQuery(
        owner_id=owner_id,
        status=_status(status),
        endpoint_id=_optional_uuid(endpoint_id, "endpoint_id"),
        function_id=_optional_uuid(function_id, "function_id"),
        task_group_id=_optional_uuid(group_id, "group_id"),
        since=_since(since),
        limit=_limit(limit),
        after=decode_cursor(cursor) if cursor else None,
        all_users=everyone,
    )


def _flag(value: str | None, field: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise invalid(f"{field}: {value[:32]!r} is not true or false")


def _status(value: str | None) -> TaskStatus | None:
    if not value:
        return None
    try:
        return TaskStatus(value)
    except ValueError:
        known = ", ".join(state.value for state in TaskStatus)
        raise invalid(f"status: {value[:32]!r} is not a task state (one of {known})") from None


def _optional_uuid(value: str | None, field: str) -> uuid.UUID | None:
    return parse_uuid(value, field) if value else None


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        since = float(value)
    except ValueError:
        since = math.nan
    if not math.isfinite(since) or since < 0:
        raise invalid(f"since: {value[:32]!r} is not a time (seconds since the epoch, e.g. 1767225600)")
    return since


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdecimal()) or len(value) > 6 or not 1 <= int(value) <= MAX_LIMIT:
        raise invalid(f"limit: {value[:32]!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(value)


# --- cursors ------------------------------------------------------------------------------


def encode_cursor(key: tuple[float, uuid.UUID]) -> str:
    """The opaque cursor for the page after the task with this (created_at, task_id) key."""
    created_at, task_id = key
    text = f"{_CURSOR_VERSION}:{created_at.hex()}:{task_id.hex}"
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, uuid.UUID]:
    """The key a cursor from `encode_cursor` holds, or `InvalidRequest` naming `cursor`."""
    bad = invalid("cursor: not a cursor from a previous page of this listing")
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise bad
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        version, created_hex, task_hex = text.split(":")
        created_at = float.fromhex(created_hex)
        task_id = uuid.UUID(hex=task_hex)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise bad from None
    if version != _CURSOR_VERSION or not math.isfinite(created_at) or len(task_hex) != 32:
        raise bad
    return created_at, task_id


# --- answers ------------------------------------------------------------------------------


def task_summary(summary: TaskSummary, *, submitted_by: str | None = None) -> dict[str, Any]:
    """One item of a listing (`submitted_by`: the submitting user's name)."""
    return {
        "task_id": str(summary.task_id),
        "status": summary.status.value,
        "endpoint_id": str(summary.endpoint_id),
        "function_id": str(summary.function_id),
        "task_group_id": str(summary.task_group_id) if summary.task_group_id is not None else None,
        "created_at": summary.created_at,
        "started_at": summary.started_at,
        "completed_at": summary.completed_at,
        "error_code": summary.error_code,
        "submitted_by": submitted_by,
    }


def page_body(page: TaskPage, usernames: Mapping[uuid.UUID, str] | None = None) -> dict[str, Any]:
    """The answer of `GET /v1/tasks`: the page's tasks (each with the name `usernames` gives its
    submitter), and the cursor of the next (or null)."""
    names = usernames or {}
    return {
        "tasks": [
            task_summary(summary, submitted_by=names.get(summary.owner_id) if summary.owner_id else None)
            for summary in page.tasks
        ],
        "next_cursor": encode_cursor(page.next_after) if page.next_after is not None else None,
    }
