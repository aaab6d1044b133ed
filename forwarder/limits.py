"""Request limits enforced on the headers, before any route reads a body (issue 12).

`RequestGuard`, a pure ASGI middleware, decides on a request's headers alone:

1. it finds the route; for a route that needs a token it authenticates the bearer token (through the
   forwarder's provider and its cache, the same as the routes) and answers 401 without reading the
   body. The identity rides on in the request's scope state (`identity_of`), so the route's own
   check (kept as defence in depth) does not authenticate the token a second time;
2. it picks the route's body limit (a function registration, a task batch and a batch lookup each
   have their own, other authenticated routes `max_request_bytes`, routes needing no token a tiny
   one) and answers 413 on Content-Length alone, or as soon as the running count of a chunked body
   passes it;
3. it bounds each wait for the next piece of the body (`limits.body_timeout_s`): 408.

Every early answer carries `Connection: close` and the server closes the connection without reading
the rest of the body: a refused upload costs the forwarder its headers and a socket buffer, whatever
its size. (A client that must see the answer before sending a large body sends `Expect:
100-continue`: the server then answers before the client sends anything.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskfabric.errors import ServiceError
from taskfabric.forwarder.http_errors import error_response, service_error_code
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.settings import ForwarderSettings

__all__ = ["BodyLimits", "RequestGuard", "RouteTable", "bearer_token", "declared_length", "identity_of", "peer_of"]

#: the key of the authenticated identity in a request's scope state
_IDENTITY_KEY = "taskfabric.identity"

#: (method, route template) -> the `limits.*` key bounding its body
_ROUTE_LIMIT_KEYS: Mapping[tuple[str, str], str] = {
    ("POST", "/v1/functions"): "function_body_bytes",
    ("POST", "/v1/endpoints/{endpoint_id}/tasks"): "submit_body_bytes",
    ("POST", "/v1/tasks/batch"): "lookup_body_bytes",
    # the Globus-Compute-compatible API (forwarder/globus_compute/)
    ("POST", "/v3/functions"): "function_body_bytes",
    ("POST", "/v3/endpoints/{endpoint_id}/submit"): "submit_body_bytes",
    ("POST", "/v2/batch_status"): "lookup_body_bytes",
}


@dataclasses.dataclass(frozen=True, slots=True)
class BodyLimit:
    """A body limit in bytes and the setting that sets it (named in the 413)."""

    max_bytes: int
    key: str


@dataclasses.dataclass(frozen=True, slots=True)
class BodyLimits:
    """The body limit of every kind of route, from the settings."""

    unauthenticated: BodyLimit
    authenticated: BodyLimit
    by_route: Mapping[tuple[str, str], BodyLimit]
    #: routes opened by a signed grant instead of a token, with their own limit
    granted: Mapping[tuple[str, str], BodyLimit] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ForwarderSettings) -> BodyLimits:
        limits = settings.limits
        return cls(
            unauthenticated=BodyLimit(limits.unauthenticated_body_bytes, "limits.unauthenticated_body_bytes"),
            authenticated=BodyLimit(settings.max_request_bytes, "max_request_bytes"),
            by_route={
                **{route: BodyLimit(getattr(limits, key), f"limits.{key}") for route, key in _ROUTE_LIMIT_KEYS.items()},
                # uploads by reference: large on purpose, bounded by their own setting
                ("PUT", "/v1/data/{sha256}"): BodyLimit(settings.max_data_bytes, "max_data_bytes"),
            },
            granted={
                # results uploaded by workers: no user token, a signed grant checked by the route
                ("PUT", "/v1/tasks/{task_id}/result-blob"): BodyLimit(
                    settings.quotas.max_result_bytes, "quotas.max_result_bytes"
                ),
            },
        )

    def of(self, method: str, template: str, *, needs_token: bool) -> BodyLimit:
        if not needs_token:
            return self.granted.get((method, template), self.unauthenticated)
        return self.by_route.get((method, template), self.authenticated)


@dataclasses.dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What the guard checks for requests matching `route` (a path template and one method)."""

    route: Route | None  # None: no operation matches (the router will answer 404 or 405)
    needs_token: bool
    limit: BodyLimit


class RouteTable:
    """The API's operations with their policies, read from the app's OpenAPI description (the one
    public list of routes: an operation needs a token when it names the bearer `auth_scheme`)."""

    def __init__(self, openapi: Mapping[str, Any], limits: BodyLimits, auth_scheme: str) -> None:
        self._policies: list[RoutePolicy] = []
        for template, operations in openapi.get("paths", {}).items():
            for method, operation in operations.items():
                needs_token = any(auth_scheme in requirement for requirement in operation.get("security") or ())
                route = Route(template, endpoint=_never_called, methods=[method.upper()])
                limit = limits.of(method.upper(), template, needs_token=needs_token)
                self._policies.append(RoutePolicy(route, needs_token, limit))
        self._unmatched = RoutePolicy(route=None, needs_token=False, limit=limits.unauthenticated)

    def find(self, scope: Scope) -> RoutePolicy:
        """The policy of the operation serving `scope` (none: the tiny unauthenticated limit)."""
        for policy in self._policies:
            if policy.route is not None and policy.route.matches(scope)[0] is Match.FULL:
                return policy
        return self._unmatched


async def _never_called(request: Any) -> None:  # the table's routes only match, they never serve
    raise AssertionError("RouteTable routes are not served")


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (None for none or another scheme)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def identity_of(scope: Scope) -> Identity | None:
    """The identity `RequestGuard` authenticated for this request (None if it did not)."""
    state = scope.get("state")
    identity = state.get(_IDENTITY_KEY) if isinstance(state, dict) else None
    return identity if isinstance(identity, Identity) else None


class _Refused(Exception):
    """An early answer: (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RequestGuard:
    """Authenticate and bound a request on its headers; bound its body as it arrives (see module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: BodyLimits,
        body_timeout_s: float,
        auth_scheme: str,
    ) -> None:
        """`auth_scheme`: the OpenAPI security scheme of the routes that need a token."""
        self.app = app
        self.limits = limits
        self.body_timeout_s = body_timeout_s
        self.auth_scheme = auth_scheme
        self._table: RouteTable | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._routes(scope).find(scope)
        try:
            if policy.needs_token:
                await self._authenticate(scope)
            _check_declared_length(scope, policy.limit)
        except _Refused as refused:
            if policy.route is not None:
                scope["route"] = policy.route  # counted under its template by HttpMetrics
            await _refuse(scope, send, refused)
            return
        await self._call_with_bounded_body(scope, receive, send, policy.limit)

    def _routes(self, scope: Scope) -> RouteTable:
        if self._table is None:  # the routes are complete once the app serves its first request
            self._table = RouteTable(scope["app"].openapi(), self.limits, self.auth_scheme)
        return self._table

    async def _authenticate(self, scope: Scope) -> None:
        forwarder = getattr(scope["app"].state, "forwarder", None)
        if forwarder is None:
            raise _Refused(503, "SERVICE_UNAVAILABLE", "the forwarder is starting or stopping; retry later")
        header = _header(scope, b"authorization")
        try:
            identity = await forwarder.authenticate(bearer_token(header), peer=peer_of(scope))
        except ServiceError as exc:
            raise _Refused(exc.status, service_error_code(exc), str(exc)) from None
        state = scope.setdefault("state", {})
        state[_IDENTITY_KEY] = identity

    async def _call_with_bounded_body(self, scope: Scope, receive: Receive, send: Send, limit: BodyLimit) -> None:
        received = 0
        started = complete = False
        refused: _Refused | None = None

        async def bounded_receive() -> Message:
            nonlocal received, refused, complete
            if refused is not None:
                return {"type": "http.disconnect"}
            if complete:  # after the body, a receive waits for the client to leave: no deadline
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):  # (wait_for: a task per chunk)
                    message = await receive()
            except TimeoutError:
                refused = _Refused(
                    408,
                    "REQUEST_TIMEOUT",
                    f"no part of the request body arrived for {self.body_timeout_s:g} s (limits.body_timeout_s)",
                )
            else:
                if message["type"] != "http.request":
                    return message
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received <= limit.max_bytes:
                    return message
                refused = _too_large(received, limit, more=True)
            if not started:
                await _refuse(scope, send, refused)
            return {"type": "http.disconnect"}  # the route stops reading; its own answer is dropped

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is None:
                started = True
                await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
            # the route failed on the body we cut off: the 413/408 went out already


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length (None: none declared). Raises `ValueError` when it is not a
    number: `RequestGuard` answers that 400, so behind it a route may call this freely."""
    value = _header(scope, b"content-length")
    return None if value is None else int(value)


def _check_declared_length(scope: Scope, limit: BodyLimit) -> None:
    try:
        declared = declared_length(scope)
    except ValueError:
        raise _Refused(400, "INVALID_REQUEST", "the Content-Length header is not a number") from None
    if declared is not None and declared > limit.max_bytes:
        raise _too_large(declared, limit, more=False)


def _too_large(size: int, limit: BodyLimit, *, more: bool) -> _Refused:
    amount = f"{size} bytes or more" if more else f"{size} bytes"
    return _Refused(
        413,
        "PAYLOAD_TOO_LARGE",
        f"the request body is {amount}, above the limit of {limit.max_bytes} bytes for this route ({limit.key})",
    )


async def _refuse(scope: Scope, send: Send, refused: _Refused) -> None:
    """The usual error body, and `Connection: close`: the rest of the body is never read."""
    response = error_response(refused.status, refused.code, str(refused), headers={"Connection": "close"})
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def peer_of(scope: Scope) -> str:
    """The client's address as "host:port" (for logs and the audit log; a proxy's, behind one)."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"
