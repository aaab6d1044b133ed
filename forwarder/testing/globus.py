"""A loopback stand-in for Globus Auth's token introspection."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import urllib.parse
import uuid
from typing import Any

__all__ = ["GlobusAuthStandIn"]


class GlobusAuthStandIn:
    """A loopback Globus Auth answering token introspection for the tokens it was given.

    `add_token(token, sub=..., username=..., exp=...)` makes a token active; any other token is
    inactive (`{"active": false}`); a wrong client id/secret gets 401, as from Globus Auth. A token's
    `aud` names the forwarder's client id unless `audience` says otherwise (a token issued for
    another resource server). `calls` counts every request answered."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self._lock = threading.Lock()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stand_in._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="globus-auth-stand-in", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def add_token(
        self,
        token: str,
        *,
        sub: uuid.UUID,
        username: str,
        exp: float | None = None,
        scope: str = "",
        audience: list[str] | None = None,
    ) -> None:
        now = int(time.time())
        claims = {
            "active": True,
            "scope": scope,
            "client_id": self.client_id,
            "sub": str(sub),
            "username": username,
            "email": username,
            "exp": int(exp if exp is not None else now + 3600),
            "iat": now,
            "nbf": now,
            "aud": list(audience) if audience is not None else [self.client_id],
            "iss": "https://auth.globus.org",
            "identity_set": [str(sub)],
        }
        with self._lock:
            self.tokens[token] = claims

    def revoke(self, token: str) -> None:
        with self._lock:
            self.tokens.pop(token, None)

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.calls += 1
        if request.path.rstrip("/") != "/v2/oauth2/token/introspect":
            self._reply(request, 404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            self._reply(request, 401, {"errors": [{"code": "UNAUTHORIZED", "detail": "invalid client credentials"}]})
            return
        if request.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
            self._reply(request, 400, {"errors": [{"code": "BAD_REQUEST"}]})
            return
        length = int(request.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(request.rfile.read(length).decode())
        token = (form.get("token") or [""])[0]
        with self._lock:
            claims = self.tokens.get(token)
        if claims is None or claims["exp"] <= time.time():
            self._reply(request, 200, {"active": False})
            return
        answer = dict(claims)
        if "identity_set" not in (form.get("include") or [""])[0].split(","):
            answer.pop("identity_set")
        self._reply(request, 200, answer)

    @staticmethod
    def _reply(request: http.server.BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def __enter__(self) -> GlobusAuthStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
