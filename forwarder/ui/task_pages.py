"""The dashboard's Tasks pages: a filtered, keyset-paginated listing, a task's detail, cancelling.

Filters are the query parameters of `GET /v1/tasks` (parsed by the same `listing` functions, so a
bad one is the same 400 naming it), plus `since` as a date and time in UTC from the form. Pages go
forward by the listing's opaque cursor and back by the browser's history.
"""

from __future__ import annotations

import calendar
import time
import urllib.parse
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from taskfabric.forwarder.listing import encode_cursor, parse_task_query
from taskfabric.forwarder.requests import invalid, parse_uuid
from taskfabric.forwarder.ui.forms import read_form
from taskfabric.forwarder.ui.timeline import timeline
from taskfabric.forwarder.ui.viewer import CSRF_FIELD, Viewer, check_csrf, dashboard_of, forwarder_of, viewer
from taskfabric.forwarder.ui.visibility import visible_endpoints, visible_functions
from taskfabric.forwarder.views import task_error

__all__ = ["task_pages_router"]

task_pages_router = APIRouter()
Who = Depends(viewer)
_PAGE_TASKS = 50
_FILTERS = ("status", "endpoint_id", "function_id", "group_id", "since", "all_users")
_MAX_OUTPUT_CHARS = 64 * 1024


def parse_since(value: str | None) -> str | None:
    """The form's `YYYY-MM-DDTHH:MM` (UTC, from a datetime-local input) as epoch seconds text;
    plain epoch seconds pass through (the listing checks them)."""
    if not value:
        return None
    if value.replace(".", "", 1).isdigit():
        return value
    for layout in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return str(calendar.timegm(time.strptime(value[:19], layout)))
        except ValueError:
            continue
    raise invalid(f"since: {value[:32]!r} is not a date and time (YYYY-MM-DDTHH:MM, UTC)")


@task_pages_router.get("/tasks")
async def tasks_page(request: Request, who: Viewer = Who) -> Response:
    forwarder = forwarder_of(request)
    params = request.query_params
    filters = {name: params.get(name) or "" for name in _FILTERS}
    query = parse_task_query(
        who.identity.user_id,
        status=filters["status"] or None,
        endpoint_id=filters["endpoint_id"] or None,
        function_id=filters["function_id"] or None,
        group_id=filters["group_id"] or None,
        since=parse_since(filters["since"]),
        limit=str(_PAGE_TASKS),
        cursor=params.get("cursor") or None,
        all_users=filters["all_users"] or None,
    )
    submitters: dict[uuid.UUID, str] = {}
    if query.all_users:  # every user's tasks on an endpoint the viewer owns or manages (else 403)
        assert query.endpoint_id is not None  # parse_task_query requires it
        await forwarder.endpoints.sharing.require_manager(who.identity, query.endpoint_id)
    page = await forwarder.tasks.list(query)
    if query.all_users:
        owners = {summary.owner_id for summary in page.tasks if summary.owner_id}
        submitters = await forwarder.endpoints.sharing.usernames(owners)
    next_url = None
    if page.next_after is not None:
        kept = {name: value for name, value in filters.items() if value}
        next_url = "/ui/tasks?" + urllib.parse.urlencode({**kept, "cursor": encode_cursor(page.next_after)})
    endpoints = await visible_endpoints(forwarder, who.identity)
    functions = await visible_functions(forwarder, who.identity)
    context = {
        "viewer": who,
        "page": "tasks",
        "tasks": page.tasks,
        "filters": filters,
        "next_url": next_url,
        "endpoints": {record.endpoint_id: record.name for record in endpoints.mine + endpoints.shared},
        "functions": {record.function_id: record.name for record in functions.mine + functions.shared},
        "states": ["waiting", "running", "success", "failed", "cancelled"],
        "paged": bool(params.get("cursor")),
        "all_users": query.all_users,
        "submitters": submitters,
        "me": who.identity.user_id,
    }
    return dashboard_of(request).page(request, "tasks.html", context)


@task_pages_router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str, who: Viewer = Who) -> Response:
    forwarder = forwarder_of(request)
    # the page shows the result's size, never its bytes: a result in the blob store is not read
    record = await forwarder.tasks.get(who.identity, parse_uuid(task_id, "task_id"), results=False)
    moments, segments = timeline(record)
    context = {
        "viewer": who,
        "page": "tasks",
        "task": record,
        "moments": moments,
        "segments": segments,
        "error": task_error(record),
        "result_bytes": record.result_bytes,
        "stdout": (record.stdout or "")[-_MAX_OUTPUT_CHARS:],
        "stderr": (record.stderr or "")[-_MAX_OUTPUT_CHARS:],
        "cancellable": record.status.pending,
        "cancelled": request.query_params.get("cancelled"),
    }
    return dashboard_of(request).page(request, "task.html", context)


@task_pages_router.post("/tasks/{task_id}/cancel")
async def cancel_task(request: Request, task_id: str, who: Viewer = Who) -> Response:
    """Cancel one of the viewer's tasks (the same service call as POST /v1/tasks/cancel)."""
    form = await read_form(request)
    check_csrf(who, dashboard_of(request), form.get(CSRF_FIELD))
    forwarder = forwarder_of(request)
    task = parse_uuid(task_id, "task_id")
    answers, cancelled = await forwarder.tasks.cancel(who.identity, [task])
    forwarder.hub.publish(cancelled)
    outcome = "yes" if answers.get(task) else "no"
    return RedirectResponse(f"/ui/tasks/{task}?cancelled={outcome}", status_code=303)
