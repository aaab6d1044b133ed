"""The web dashboard: server-rendered pages at /ui/, served by the forwarder itself.

Its job: show a signed-in user their endpoints, tasks and functions (and operators the Admin page),
and let them cancel a task. Who it talks to: the browser (HTML, one small script, one stylesheet,
charts as inline SVG drawn in Python: nothing from another origin, it works offline) and, inside the
process, the `Forwarder`'s registries and the store's read-only dashboard queries; it never talks to
endpoints. Where its state is: the session is a signed cookie (`sessions`), checked against the
store on every request; the queue depth samples of the last hour are in memory (`series`).

Modules: `sessions` (cookies, CSRF tokens), `viewer` (the signed-in user of a request), `signin`,
`pages` (endpoints, functions, admin), `task_pages`, `visibility` (what a user may see), `charts`,
`timeline`, `series`, `forms`. See docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskfabric.errors import BrokerError, ServiceError, StoreError, TaskfabricError
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.ui.pages import pages_router
from taskfabric.forwarder.ui.sessions import SessionSigner, load_or_create_key
from taskfabric.forwarder.ui.signin import signin_router
from taskfabric.forwarder.ui.task_pages import task_pages_router
from taskfabric.forwarder.ui.viewer import Dashboard, SignInRequired, sign_in_redirect
from taskfabric.paths import taskfabric_home

__all__ = ["Dashboard", "install_dashboard", "sample_queue_depths", "session_key_path"]

log = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"
_Handler = Callable[[Request, Exception], Awaitable[Response]]
#: an exception handler as Starlette keeps them (sync or async)
_ApiHandler = Callable[[Request, Any], Response | Awaitable[Response]]


def session_key_path(settings: ForwarderSettings) -> Path:
    """Where the session signing key is kept (`ui.session_key_file`, else in the forwarder's home)."""
    return settings.ui.session_key_file or taskfabric_home() / "forwarder" / "ui-session.key"


def install_dashboard(app: FastAPI, settings: ForwarderSettings) -> Dashboard:
    """Mount the dashboard's routes and static files at /ui and its error pages; returns its state
    (also on `app.state.dashboard`)."""
    dashboard = Dashboard(settings, SessionSigner(load_or_create_key(session_key_path(settings))))
    app.state.dashboard = dashboard
    router = APIRouter(prefix="/ui", include_in_schema=False)
    router.include_router(signin_router)
    router.include_router(pages_router)
    router.include_router(task_pages_router)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(_STATIC)), name="ui-static")
    app.add_exception_handler(SignInRequired, _signin_required)
    for kind in (ServiceError, StarletteHTTPException, StoreError, BrokerError):
        app.add_exception_handler(kind, _html_on_ui(app.exception_handlers[kind], dashboard))
    return dashboard


async def _signin_required(request: Request, exc: Exception) -> Response:
    return sign_in_redirect(request)


def _html_on_ui(api_handler: _ApiHandler, dashboard: Dashboard) -> _Handler:
    """Errors on /ui/ pages as an HTML page with the same status and code as the API's JSON."""

    async def handle(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/ui/"):
            answer = api_handler(request, exc)
            return await answer if inspect.isawaitable(answer) else answer
        status, code, message = _described(exc)
        context = {"viewer": None, "status": status, "code": code, "message": message}
        return dashboard.page(request, "error.html", context, status=status)

    return handle


def _described(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, str(exc)
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, f"HTTP_{exc.status_code}", str(exc.detail or "")
    log.error("%s during a dashboard page: %s", type(exc).__name__, exc)
    return 503, "SERVICE_UNAVAILABLE", "the store or the broker is unavailable; retry later"


async def sample_queue_depths(dashboard: Dashboard, forwarder: Forwarder) -> None:
    """Record every endpoint's unfinished tasks every `ui.sample_period_s`, until cancelled."""
    period_s = dashboard.settings.ui.sample_period_s
    while True:
        try:
            counts = await forwarder.runner.read(forwarder.store.tasks.pending_counts)
            records = await forwarder.runner.read(forwarder.store.endpoints.list)
            dashboard.series.record(counts, [record.endpoint_id for record in records], now=time.time())
        except TaskfabricError as exc:
            log.warning("sampling queue depths failed: %s", exc)
        await asyncio.sleep(period_s)
