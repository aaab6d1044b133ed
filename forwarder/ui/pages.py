"""The dashboard's pages about endpoints and functions, and the operators' Admin page.

Each handler reads through the `Forwarder`'s registries (the same access checks as API v1) or the
store's read-only dashboard queries, then renders one template. Tasks are in `task_pages`.
"""

from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from taskfabric.errors import NotFoundError, PermissionDenied
from taskfabric.forwarder.health import check_readiness
from taskfabric.forwarder.records import EndpointRecord, TaskStatus
from taskfabric.forwarder.requests import parse_uuid
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.settings import QuotaSettings
from taskfabric.forwarder.ui.charts import Point, line_chart
from taskfabric.forwarder.ui.series import WINDOW_S
from taskfabric.forwarder.ui.viewer import Viewer, dashboard_of, forwarder_of, viewer
from taskfabric.forwarder.ui.visibility import visible_endpoints, visible_functions
from taskfabric.forwarder.views import endpoint_info
from taskfabric.protocol.api import EndpointInfo

__all__ = ["pages_router"]

pages_router = APIRouter()
Who = Depends(viewer)


@pages_router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/endpoints", status_code=303)


def _info(forwarder: Forwarder, record: EndpointRecord) -> EndpointInfo:
    return endpoint_info(record, now=time.time(), offline_after_s=forwarder.settings.endpoint_offline_after_s)


@pages_router.get("/endpoints")
async def endpoints_page(request: Request, who: Viewer = Who) -> Response:
    forwarder = forwarder_of(request)
    visible = await visible_endpoints(forwarder, who.identity)
    counts = await forwarder.runner.read(forwarder.store.tasks.pending_counts)

    def rows(records: list[EndpointRecord]) -> list[dict[str, object]]:
        return [
            {
                "info": _info(forwarder, record),
                "waiting": counts.get((record.endpoint_id, TaskStatus.WAITING), 0),
                "running": counts.get((record.endpoint_id, TaskStatus.RUNNING), 0),
            }
            for record in records
        ]

    context = {
        "viewer": who,
        "mine": rows(visible.mine),
        "shared": rows(visible.shared),
        "roles": visible.roles,
        "page": "endpoints",
    }
    return dashboard_of(request).page(request, "endpoints.html", context)


async def _visible_endpoint(forwarder: Forwarder, who: Viewer, value: str) -> tuple[EndpointRecord, bool]:
    """One endpoint the viewer may see, and whether they own or manage it; one they have no role
    on is as unknown as a missing one (404)."""
    endpoint_id = parse_uuid(value, "endpoint_id")
    visible = await visible_endpoints(forwarder, who.identity)
    for record in visible.mine + visible.shared:
        if record.endpoint_id == endpoint_id:
            return record, visible.may_manage(endpoint_id)
    raise NotFoundError(f"no endpoint {endpoint_id}", code="NOT_FOUND")


@pages_router.get("/endpoints/{endpoint_id}")
async def endpoint_page(request: Request, endpoint_id: str, who: Viewer = Who) -> Response:
    forwarder = forwarder_of(request)
    dashboard = dashboard_of(request)
    record, manages = await _visible_endpoint(forwarder, who, endpoint_id)
    if not manages:  # a submitter: the endpoint's status, not its blocks nor other users' traffic
        context = {"viewer": who, "page": "endpoints", "info": _info(forwarder, record), "limited": True}
        return dashboard.page(request, "endpoint.html", context)
    now = time.time()
    since = now - WINDOW_S
    per_minute = await forwarder.runner.read(
        forwarder.store.dashboard.completed_per_minute, record.endpoint_id, since=since
    )
    failures = await forwarder.runner.read(forwarder.store.dashboard.failures_by_code, record.endpoint_id, since=since)
    first_minute = int(since // 60) + 1
    throughput = [
        Point(minute * 60 + 30, round(per_minute.get(minute, 0) / 60, 3))
        for minute in range(first_minute, int(now // 60) + 1)
    ]
    depth = [
        Point(at, waiting + running)
        for at, waiting, running in dashboard.series.samples(record.endpoint_id, since=since)
    ]
    context = {
        "viewer": who,
        "page": "endpoints",
        "info": _info(forwarder, record),
        "blocks": record.status.blocks,
        "throughput_chart": line_chart(throughput, title="tasks/s completed", unit="tasks/s", start=since, end=now),
        "depth_chart": line_chart(depth, title="unfinished tasks", unit="tasks", start=since, end=now),
        "completed_last_hour": sum(per_minute.values()),
        "failures": sorted(failures.items(), key=lambda item: -item[1]),
    }
    return dashboard.page(request, "endpoint.html", context)


@pages_router.get("/functions")
async def functions_page(request: Request, who: Viewer = Who) -> Response:
    forwarder = forwarder_of(request)
    visible = await visible_functions(forwarder, who.identity)
    ids = [record.function_id for record in visible.mine + visible.shared]
    usage = await forwarder.runner.read(forwarder.store.dashboard.function_usage, ids)
    context = {"viewer": who, "page": "functions", "mine": visible.mine, "shared": visible.shared, "usage": usage}
    return dashboard_of(request).page(request, "functions.html", context)


@pages_router.get("/admin")
async def admin_page(request: Request, who: Viewer = Who) -> Response:
    if not who.is_admin:
        raise PermissionDenied("the Admin page is for operators (the forwarder's ui.admin_users)", code="FORBIDDEN")
    forwarder = forwarder_of(request)
    store = forwarder.store
    readiness = await check_readiness(forwarder)
    context = {
        "viewer": who,
        "page": "admin",
        "users": await forwarder.runner.read(store.users.list),
        "tokens": await forwarder.runner.read(store.dashboard.tokens),
        "dead_letters": await forwarder.runner.read(store.dead_letters.list, limit=50),
        "readiness": readiness,
        "backend": store.backend,
        "quotas": _quota_rows(forwarder.settings.quotas),
    }
    return dashboard_of(request).page(request, "admin.html", context)


def _quota_rows(quotas: QuotaSettings) -> list[tuple[str, object]]:
    """The quota settings as (key, value) rows (0 means no limit, as in the settings)."""
    return [(f"quotas.{field.name}", getattr(quotas, field.name)) for field in dataclasses.fields(quotas)]
