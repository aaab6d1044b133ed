"""Signing in (a token for a session cookie) and out.

The sign-in form is protected against login CSRF too: the GET sets a short-lived SameSite=Strict
nonce cookie and the form carries its HMAC; a POST without the pair is refused. A wrong token gets
the form back with a 401 and the reason; its cost to an attacker is one token check (a SHA-256 and
an indexed read for local tokens), the same as an API request with a bad bearer token.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from taskfabric.errors import AuthenticationError
from taskfabric.forwarder.auth import hash_token
from taskfabric.forwarder.ui.forms import read_form
from taskfabric.forwarder.ui.sessions import COOKIE_NAME
from taskfabric.forwarder.ui.viewer import (
    CSRF_FIELD,
    CsrfRefused,
    Viewer,
    check_csrf,
    dashboard_of,
    forwarder_of,
    viewer,
)

__all__ = ["signin_router"]

_NONCE_COOKIE = "taskfabric_signin"
_NONCE_MAX_AGE_S = 3600

signin_router = APIRouter()


def _safe_next(value: str | None) -> str:
    """Only a path inside the dashboard: never an open redirect to another site."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/endpoints"


@signin_router.get("/signin")
async def signin_form(request: Request) -> Response:
    return _form(request, error=None, status=200)


def _form(request: Request, *, error: str | None, status: int) -> Response:
    dashboard = dashboard_of(request)
    nonce = secrets.token_urlsafe(16)
    context = {
        "error": error,
        "next": _safe_next(request.query_params.get("next")),
        "csrf_token": dashboard.signer.sign_text(f"signin.{nonce}"),
        "viewer": None,
    }
    response = dashboard.page(request, "signin.html", context, status=status)
    response.set_cookie(
        _NONCE_COOKIE,
        nonce,
        max_age=_NONCE_MAX_AGE_S,
        path="/ui",
        httponly=True,
        secure=dashboard.settings.tls.enabled,
        samesite="strict",
    )
    return response


@signin_router.post("/signin")
async def signin(request: Request) -> Response:
    dashboard = dashboard_of(request)
    form = await read_form(request)
    nonce = request.cookies.get(_NONCE_COOKIE) or ""
    if not nonce or not dashboard.signer.check_text(f"signin.{nonce}", form.get(CSRF_FIELD)):
        raise CsrfRefused()
    token = (form.get("token") or "").strip()
    try:
        identity = await forwarder_of(request).authenticate(token or None)
    except AuthenticationError as exc:
        return _form(request, error=f"sign-in refused: {exc}", status=401)
    expires_at = time.time() + dashboard.settings.ui.session_max_age_s
    cookie = dashboard.signer.issue(identity.user_id, hash_token(token), expires_at=expires_at)
    target = _safe_next(form.get("next"))
    response = RedirectResponse(target, status_code=303)
    dashboard.set_session_cookie(response, cookie)
    response.delete_cookie(_NONCE_COOKIE, path="/ui")
    return response


@signin_router.post("/signout")
async def signout(request: Request, who: Viewer = Depends(viewer)) -> Response:  # noqa: B008
    form = await read_form(request)
    check_csrf(who, dashboard_of(request), form.get(CSRF_FIELD))
    response = RedirectResponse("/ui/signin?" + urllib.parse.urlencode({"signed_out": "1"}), status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/ui")
    return response
