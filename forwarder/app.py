"""The FastAPI application: `create_app(settings)`.

The lifespan starts the `Forwarder` (store, broker link, consumers, ingest thread) before the first
request and stops it after the last. Middleware (`limits.RequestGuard`) authenticates and bounds
each request on its headers before any body is read; exception handlers give
every error the same body and keep bad input away from 500 (see `http_errors`). The OpenAPI
description is served at /openapi.json (interactive docs at /docs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from taskfabric import __version__
from taskfabric.errors import BrokerError
from taskfabric.forwarder.broker import AdminBrokerLink
from taskfabric.forwarder.globus_compute import install_globus_compute
from taskfabric.forwarder.health import health_router
from taskfabric.forwarder.hot_routes import HotRoutes
from taskfabric.forwarder.http_errors import install_error_handlers
from taskfabric.forwarder.limits import BodyLimits, RequestGuard
from taskfabric.forwarder.metrics import (
    ForwarderMetrics,
    HttpMetrics,
    count_broker_errors,
    log_access,
    metrics_router,
)
from taskfabric.forwarder.routes import AUTH_SCHEME, router, websocket_router
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.ui import Dashboard, install_dashboard, sample_queue_depths

__all__ = ["create_app"]

_DESCRIPTION = (
    "The taskfabric forwarder: register functions and endpoints, submit task batches, "
    "read results (also as a WebSocket stream at /v1/results/ws). See docs/api.md."
)


def create_app(settings: ForwarderSettings, *, broker: AdminBrokerLink | None = None) -> FastAPI:
    """A FastAPI app serving API v1 with a `Forwarder` built from `settings`, plus /metrics,
    /healthz and /readyz (see `metrics` and `health`), and the web dashboard at /ui/ (see `ui`).
    `broker`: see `Forwarder`."""
    metrics = ForwarderMetrics(cache_s=settings.metrics_cache_s)
    dashboard: Dashboard | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        forwarder = Forwarder(settings, metrics=metrics, broker=broker)
        try:
            await forwarder.start()
        except BaseException as exc:
            app.state.startup_error = exc  # `serve` re-raises it for a named exit code
            raise
        app.state.forwarder = forwarder
        app.state.compute_results = forwarder.compute_results
        log_access(token=settings.metrics_token, host=settings.host)
        sampler = asyncio.create_task(sample_queue_depths(dashboard, forwarder)) if dashboard else None
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            await forwarder.stop()

    app = FastAPI(
        title="taskfabric forwarder",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(HotRoutes)  # innermost: inside the guard and the metrics
    app.add_middleware(
        RequestGuard,
        limits=BodyLimits.from_settings(settings),
        body_timeout_s=settings.limits.body_timeout_s,
        auth_scheme=AUTH_SCHEME,
    )
    install_error_handlers(app)
    app.add_middleware(HttpMetrics, metrics=metrics)
    app.exception_handlers[BrokerError] = count_broker_errors(app.exception_handlers[BrokerError], metrics)
    app.include_router(router)
    app.include_router(websocket_router)
    if settings.globus_compute.enabled:
        install_globus_compute(app)  # the Globus-Compute-compatible API (docs/globus-compute.md)
    app.include_router(health_router)
    app.include_router(metrics_router)
    if settings.ui.enabled:
        dashboard = install_dashboard(app, settings)  # after the error handlers: it wraps them
    return app
