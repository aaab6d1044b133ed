"""Routes served before FastAPI's router: the ones hit once per task by workers.

`PUT /v1/tasks/{task_id}/result-blob` (a worker uploading a large result, `routes.put_result_blob`)
comes once per large result. Through FastAPI's router, its route matching and its dependency
solving cost about half of the request's CPU in the forwarder; `HotRoutes` answers it directly,
the same way: the same service call, the same JSON answer, errors through the app's own exception
handlers. It sits inside `HttpMetrics` and `RequestGuard`, so the request is counted under its
route template and its body is bounded and timed as before. The route stays declared in the
router (OpenAPI, and any request this does not take, such as a malformed task id).
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from taskfabric.forwarder.limits import declared_length
from taskfabric.protocol.result_uploads import RESULT_GRANT_HEADER

__all__ = ["HotRoutes"]

_HEX = "[0-9a-fA-F]"
_RESULT_BLOB = re.compile(rf"/v1/tasks/({_HEX}{{8}}-?{_HEX}{{4}}-?{_HEX}{{4}}-?{_HEX}{{4}}-?{_HEX}{{12}})/result-blob")


@dataclasses.dataclass(frozen=True, slots=True)
class _Route:
    """What `HttpMetrics` reads of a matched route: its path template."""

    path: str


_RESULT_BLOB_ROUTE = _Route("/v1/tasks/{task_id}/result-blob")
_GRANT_HEADER = RESULT_GRANT_HEADER.lower().encode()


class HotRoutes:
    """ASGI middleware answering `PUT /v1/tasks/{task_id}/result-blob` itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "PUT":
            matched = _RESULT_BLOB.fullmatch(scope["path"])
            if matched is not None and getattr(scope["app"].state, "forwarder", None) is not None:
                await self._result_blob(scope, receive, send, uuid.UUID(matched.group(1)))
                return
        await self.app(scope, receive, send)

    async def _result_blob(self, scope: Scope, receive: Receive, send: Send, task_id: uuid.UUID) -> None:
        scope["route"] = _RESULT_BLOB_ROUTE  # counted by HttpMetrics under its template
        grant = dict(scope["headers"]).get(_GRANT_HEADER)
        try:
            blob = await scope["app"].state.forwarder.result_uploads.put(
                task_id,
                grant.decode("latin-1") if grant is not None else None,
                _body(receive),
                now=time.time(),
                size=declared_length(scope),  # a number: `RequestGuard` refused anything else
            )
            response: Any = JSONResponse(dataclasses.asdict(blob))
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as exc:
            response = await _handled(scope, receive, exc)
        await response(scope, receive, send)


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body's chunks, as `Request.stream()` yields them."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _handled(scope: Scope, receive: Receive, exc: Exception) -> Any:
    """The app's answer to `exc` (its exception handler for the nearest class), or raise it."""
    handlers = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return await handler(Request(scope, receive), exc)
    raise exc
