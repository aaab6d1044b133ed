"""`RequestGuard` in-process: one token check per request, routes classified from the OpenAPI
description, the body never read for a refused request. A stand-in forwarder counts the token
checks (the real forwarder's guard is tested on a real process in tests/integration/forwarder)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from taskfabric.errors import AuthenticationError, ConfigError
from taskfabric.forwarder.http_errors import install_error_handlers
from taskfabric.forwarder.limits import BodyLimit, BodyLimits, RequestGuard, bearer_token
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.routes import AUTH_SCHEME, Caller
from taskfabric.forwarder.settings import ForwarderSettings

_ALICE = Identity(user_id=uuid.uuid4(), username="alice", auth="local")


class CountingForwarder:
    """Accepts the token "good"; counts every check."""

    def __init__(self) -> None:
        self.checks = 0

    async def authenticate(self, token: str | None, *, peer: str = "") -> Identity:
        self.checks += 1
        if token != "good":
            raise AuthenticationError("unknown token", code="INVALID_TOKEN")
        return _ALICE


def _app() -> tuple[FastAPI, CountingForwarder, list[int]]:
    app = FastAPI()
    bodies_read: list[int] = []

    @app.post("/v1/things")
    async def things(request: Request, identity: Caller) -> dict[str, Any]:
        body = await request.body()
        bodies_read.append(len(body))
        return {"user": identity.username}

    @app.get("/v1/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    limits = BodyLimits(
        unauthenticated=BodyLimit(16, "limits.unauthenticated_body_bytes"),
        authenticated=BodyLimit(100, "max_request_bytes"),
        by_route={},
    )
    app.add_middleware(RequestGuard, limits=limits, body_timeout_s=5.0, auth_scheme=AUTH_SCHEME)
    install_error_handlers(app)
    forwarder = CountingForwarder()
    app.state.forwarder = forwarder
    return app, forwarder, bodies_read


def _call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(call())


def test_a_token_is_checked_once_per_request() -> None:
    app, forwarder, bodies_read = _app()
    response = _call(app, "POST", "/v1/things", content=b"x" * 50, headers={"Authorization": "Bearer good"})
    assert response.status_code == 200 and response.json() == {"user": "alice"}
    assert forwarder.checks == 1  # the guard's; the route's dependency reused its identity
    assert bodies_read == [50]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer bad"}, {"Authorization": "Basic good"}])
def test_a_refused_token_never_reaches_the_route(headers: dict[str, str]) -> None:
    app, _, bodies_read = _app()
    response = _call(app, "POST", "/v1/things", content=b"x" * 50, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "INVALID_TOKEN", "message": "unknown token"}}
    assert response.headers["connection"] == "close" and response.headers["www-authenticate"] == "Bearer"
    assert bodies_read == []


def test_routes_without_a_token_get_the_tiny_limit() -> None:
    app, forwarder, _ = _app()
    assert _call(app, "GET", "/v1/open").status_code == 200
    refused = _call(app, "GET", "/v1/open", content=b"x" * 17)
    assert refused.status_code == 413
    assert "limits.unauthenticated_body_bytes" in refused.json()["error"]["message"]
    assert forwarder.checks == 0


def test_a_streamed_body_is_cut_at_the_running_count() -> None:
    app, _, bodies_read = _app()

    async def body() -> Any:
        for _ in range(10):
            yield b"x" * 30

    response = _call(app, "POST", "/v1/things", content=body(), headers={"Authorization": "Bearer good"})
    assert response.status_code == 413
    assert "100 bytes" in response.json()["error"]["message"]
    assert bodies_read == []


@pytest.mark.parametrize(
    ("header", "token"),
    [(None, None), ("", None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None)],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"submit_body_bytes": 1_000_000}, "limits.submit_body_bytes: must be at least"),
        ({"function_body_bytes": 1_000_000}, "limits.function_body_bytes: must be at least"),
        ({"lookup_body_bytes": 10}, "limits.lookup_body_bytes: must be at least 1024"),
        ({"header_timeout_s": 0}, "limits.header_timeout_s"),
        ({"max_conections": 5}, "did you mean 'max_connections'"),
    ],
)
def test_bad_limits_are_named(limits: dict[str, Any], message: str, tmp_home: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        ForwarderSettings.from_mapping({"limits": limits})


def test_limits_from_the_environment(tmp_home: Path) -> None:
    environ = {"TASKFABRIC_FORWARDER_LIMITS_MAX_CONNECTIONS": "50", "TASKFABRIC_FORWARDER_LIMITS_BODY_TIMEOUT_S": "2.5"}
    settings = ForwarderSettings.load(environ=environ)
    assert (settings.limits.max_connections, settings.limits.body_timeout_s) == (50, 2.5)
    limits = BodyLimits.from_settings(settings)
    assert limits.of("POST", "/v1/tasks/batch", needs_token=True) == BodyLimit(1024 * 1024, "limits.lookup_body_bytes")
    assert limits.of("POST", "/v1/tasks/batch", needs_token=False).key == "limits.unauthenticated_body_bytes"
    assert limits.of("POST", "/v1/endpoints", needs_token=True).key == "max_request_bytes"


def test_a_function_body_is_parsed_by_the_route_with_fastapis_error_shape() -> None:
    """POST /v1/functions reads its body itself (a large one is parsed on a worker thread, see
    `routes._sized`); a bad body still gets the 422 FastAPI's own validation gives, located in the body."""
    from fastapi.exceptions import RequestValidationError

    from taskfabric.forwarder.routes import _function_registration

    parsed = _function_registration(b'{"name": "f", "body": "AAAA", "python_version": "3.11.7"}')
    assert (parsed.name, parsed.body) == ("f", "AAAA")
    with pytest.raises(RequestValidationError) as missing:
        _function_registration(b'{"body": "AAAA"}')
    assert [error["loc"] for error in missing.value.errors()] == [("body", "name")]
    with pytest.raises(RequestValidationError) as malformed:
        _function_registration(b'{"name": ')
    assert malformed.value.errors()[0]["type"] == "json_invalid"
