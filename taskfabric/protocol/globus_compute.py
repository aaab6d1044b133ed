"""Shapes of the Globus-Compute-compatible API (docs/globus-compute.md): the bytes and JSON bodies that
cross to and from the unmodified Globus Compute SDK, as pure data.

- The payload-format marker. A function registered through the compatible API is stored with its
  body prefixed by `GLOBUS_COMPUTE_BODY_PREFIX`; the rest is the SDK's packed `function_code`. Its
  tasks' payloads are the SDK's packed `(args, kwargs)` buffers. Only workers look inside either
  (with the SDK's own `ComputeSerializer`); to the forwarder and the agent they stay opaque bytes.
- The result message the SDK's Executor consumes from its task group's queue: globus-compute-common's
  `Result` in its protocol 1 envelope (a version byte 0x01, then JSON).
- The task status bodies of `GET /v2/tasks/{id}` and `POST /v2/batch_status`.
- The OAuth2 token answer of the client-credentials flow.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

__all__ = [
    "COMPUTE_RESOURCE_SERVER",
    "COMPUTE_SCOPE",
    "GLOBUS_COMPUTE_BODY_PREFIX",
    "MIN_SDK_VERSION",
    "ComputeOutcome",
    "compute_result_message",
    "is_compute_body",
    "task_status_body",
    "token_body",
]

#: marks a function body (and so its tasks) as Globus-Compute-format
GLOBUS_COMPUTE_BODY_PREFIX = b"taskfabric-globus-compute/1\n"
#: the resource server and scope the SDK asks tokens for (globus_sdk.scopes.ComputeScopes)
COMPUTE_RESOURCE_SERVER = "funcx_service"
COMPUTE_SCOPE = "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all"
#: the oldest SDK whose routes and formats we serve (the 2.x SDKs use the same v2/v3 routes)
MIN_SDK_VERSION = "2.0.0"
_PROTOCOL_1 = b"\x01"


def is_compute_body(body: bytes) -> bool:
    """Whether a stored function body is Globus-Compute-format."""
    return body.startswith(GLOBUS_COMPUTE_BODY_PREFIX)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ComputeOutcome:
    """A finished task as the SDK sees it: `data` is the serialized result (a ComputeSerializer
    string) or, for a failure, the error text the SDK shows in `TaskExecutionFailed`."""

    task_id: uuid.UUID
    ok: bool
    data: str
    error_code: str = ""
    completed_at: float | None = None
    details: dict[str, Any] | None = None


def compute_result_message(outcome: ComputeOutcome) -> bytes:
    """globus-compute-common's `Result` message, packed as its protocol 1 does."""
    data: dict[str, Any] = {"task_id": str(outcome.task_id), "data": outcome.data, "details": outcome.details}
    if not outcome.ok:
        data["error_details"] = {"code": outcome.error_code or "TASK_FAILED", "user_message": outcome.data[-4096:]}
    return _PROTOCOL_1 + json.dumps({"message_type": "result", "data": data}, separators=(",", ":")).encode()


def task_status_body(task_id: uuid.UUID, status: str, outcome: ComputeOutcome | None) -> dict[str, Any]:
    """One task as `GET /v2/tasks/{id}` answers it. `status` is a Globus Compute task state;
    the SDK treats anything but success and failed as pending."""
    body: dict[str, Any] = {"task_id": str(task_id), "status": status}
    if outcome is None:
        return body
    body["completion_t"] = str(outcome.completed_at or 0)
    if outcome.details:
        body["details"] = outcome.details
    body["result" if outcome.ok else "exception"] = outcome.data
    return body


def token_body(access_token: str, *, lifetime_s: int) -> dict[str, Any]:
    """The token answer of `POST /v2/oauth2/token` (client credentials): one token, for the
    Compute resource server and scope."""
    return {
        "access_token": access_token,
        "expires_in": lifetime_s,
        "resource_server": COMPUTE_RESOURCE_SERVER,
        "scope": COMPUTE_SCOPE,
        "token_type": "Bearer",
        "other_tokens": [],
    }
