"""The request-size limit, as a pure ASGI middleware (before any route reads the body).

A request declaring (Content-Length) or streaming more than `max_request_bytes` gets 413 naming the
limit. The excess body is read and discarded (up to a bound) before answering, so that the client
sees the response instead of a connection reset in the middle of its upload.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestSizeLimit"]

#: read at most this many times the limit before answering anyway (and closing)
_DRAIN_FACTOR = 4


class RequestSizeLimit:
    """Answer 413 to HTTP requests whose body is larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._drain(receive, already=0, declared=declared)
            await self._reject(send, declared)
            return
        await self.app(scope, *self._guarded(receive, send))

    def _guarded(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        received = 0
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request" and not rejected:
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    if message.get("more_body", False):
                        await self._drain(receive, already=received, declared=None)
                    await self._reject(send, received)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not rejected:  # the 413 went out already: the route's own answer is dropped
                await send(message)

        return limited_receive, guarded_send

    async def _drain(self, receive: Receive, *, already: int, declared: int | None) -> None:
        budget = _DRAIN_FACTOR * self.max_bytes
        if declared is not None and declared > budget:
            return
        total = already
        while total <= budget:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(self, send: Send, size: int) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "PAYLOAD_TOO_LARGE",
                    "message": f"the request body is {size} bytes or more, above the limit of "
                    f"{self.max_bytes} bytes (max_request_bytes)",
                }
            }
        ).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    headers: Any = scope.get("headers") or []
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
