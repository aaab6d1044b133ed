"""Who is looking: the dashboard's shared state and the signed-in `Viewer` of a request.

`Dashboard` (on `app.state.dashboard`) holds the session signer, the templates and the queue depth
samples. `viewer(request)` is the dependency of every page: it verifies the session cookie, re-checks
the token behind it in the store, and raises `SignInRequired` (answered with a redirect to the
sign-in page) when any of that fails. `check_csrf` guards every POST.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from taskfabric.errors import ServiceError
from taskfabric.forwarder.auth.local import check_usable
from taskfabric.forwarder.records import Identity
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.ui.series import DepthSeries
from taskfabric.forwarder.ui.sessions import COOKIE_NAME, Session, SessionSigner

__all__ = [
    "CSRF_FIELD",
    "CsrfRefused",
    "Dashboard",
    "SignInRequired",
    "Viewer",
    "check_csrf",
    "dashboard_of",
    "forwarder_of",
    "viewer",
]

CSRF_FIELD = "csrf_token"
_TEMPLATES = Path(__file__).parent / "templates"


class SignInRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in page."""


class CsrfRefused(ServiceError):
    """A POST without this session's CSRF token."""

    def __init__(self) -> None:
        super().__init__("the form's CSRF token is missing or wrong: reload the page", status=403, code="CSRF_REFUSED")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Viewer:
    """The signed-in user of a request, with what every page needs about them."""

    identity: Identity
    session: Session
    csrf_token: str
    is_admin: bool


class Dashboard:
    """The dashboard's state, one per app."""

    def __init__(self, settings: ForwarderSettings, signer: SessionSigner) -> None:
        self.settings = settings
        self.signer = signer
        self.series = DepthSeries(period_s=settings.ui.sample_period_s)
        environment = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True)
        self.templates = Jinja2Templates(env=environment)
        self.templates.env.filters["when"] = format_time
        self.templates.env.filters["short"] = lambda value: str(value)[:8]

    def page(self, request: Request, name: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
        """A rendered page; `context` gets the request and the path prefix."""
        headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": _CSP}
        return self.templates.TemplateResponse(request, name, context, status_code=status, headers=headers)

    def set_session_cookie(self, response: Response, cookie: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=int(self.settings.ui.session_max_age_s),
            path="/ui",
            httponly=True,
            secure=self.settings.tls.enabled,
            samesite="strict",
        )


#: no inline script, nothing from another origin: pages work offline and injected markup cannot run
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"


def format_time(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + f".{int(value * 1000) % 1000:03d}"


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def forwarder_of(request: Request) -> Forwarder:
    forwarder: Forwarder = request.app.state.forwarder
    return forwarder


async def viewer(request: Request) -> Viewer:
    """The signed-in user (`SignInRequired` otherwise: no cookie, a forged or expired one, or a
    token revoked since sign-in)."""
    dashboard = dashboard_of(request)
    session = dashboard.signer.verify(request.cookies.get(COOKIE_NAME), now=time.time())
    if session is None:
        raise SignInRequired()
    identity = await _session_identity(forwarder_of(request), session)
    if identity is None:
        raise SignInRequired()
    return Viewer(
        identity=identity,
        session=session,
        csrf_token=dashboard.signer.csrf_token(session),
        is_admin=identity.username in dashboard.settings.ui.admin_users and identity.auth == "local",
    )


async def _session_identity(forwarder: Forwarder, session: Session) -> Identity | None:
    """The user behind a session if its token still counts. Local tokens are looked up by hash
    (revocation, expiry and disabling the user end the session at once); Globus tokens are not
    kept, so a Globus session lives until it expires or its user is disabled (docs/dashboard.md)."""
    if forwarder.settings.auth.provider == "local":
        owner = await forwarder.runner.read(forwarder.store.users.token_owner, session.token_hash)
        if owner is None or owner.identity.user_id != session.user_id:
            return None
        try:
            check_usable(owner, time.time())  # the rule bearer tokens are held to
        except ServiceError:
            return None
        return owner.identity
    user = await forwarder.runner.read(forwarder.store.users.get, session.user_id)
    if user is None or user.disabled_at is not None:
        return None
    return Identity(user_id=user.user_id, username=user.username, auth=user.auth)


def check_csrf(viewer: Viewer, dashboard: Dashboard, token: str | None) -> None:
    if not dashboard.signer.check_csrf(viewer.session, token):
        raise CsrfRefused()


def sign_in_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, coming back to this page afterwards (GET only)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = urllib.parse.urlencode({"next": target}) if request.method == "GET" else ""
    return RedirectResponse(f"/ui/signin{'?' + query if query else ''}", status_code=303)
