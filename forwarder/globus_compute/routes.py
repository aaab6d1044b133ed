"""The routes of the Globus Compute web service that the SDK's `Client` and `Executor` call.

Each handler parses the SDK's body, calls the same forwarder service a `/v1` route calls (so
ownership, endpoint and function sharing, allow-lists, grant limits and quotas apply exactly as
there), and renders the SDK's shape. Tasks submitted here are ordinary tasks: same store, queues
and endpoints; their functions are marked Globus-Compute-format (see
`taskfabric.protocol.globus_compute`), which is what a worker decodes by.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from taskfabric import __version__
from taskfabric.errors import NotFoundError, PermissionDenied
from taskfabric.forwarder.globus_compute.bodies import (
    compute_outcome,
    compute_status,
    parse_function_registration,
    parse_json_object,
    parse_submit,
)
from taskfabric.forwarder.globus_compute.results import ComputeResultRelay
from taskfabric.forwarder.records import Identity, TaskQuery, TaskRecord
from taskfabric.forwarder.requests import SubmitLimits, invalid, parse_task_ids
from taskfabric.forwarder.routes import SUBMITTER_FIELDS, Caller, Service
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.views import endpoint_info
from taskfabric.protocol import render
from taskfabric.protocol.globus_compute import (
    GLOBUS_COMPUTE_BODY_PREFIX,
    MIN_SDK_VERSION,
    task_status_body,
)

__all__ = ["compute_router"]

compute_router = APIRouter(tags=["globus-compute"])
_MAX_TASK_IDS = 10_000
_GROUP_PAGE = 1000


def _relay(request: Request) -> ComputeResultRelay:
    relay: ComputeResultRelay = request.app.state.compute_results
    return relay


Relay = Annotated[ComputeResultRelay, Depends(_relay)]


# --- version --------------------------------------------------------------------------------


@compute_router.get("/v2/version")
async def get_version() -> JSONResponse:
    """What `Client.version_check` reads (no authentication)."""
    return JSONResponse(
        {
            "api": "1.0.0",
            "min_sdk_version": MIN_SDK_VERSION,
            "min_ep_version": MIN_SDK_VERSION,
            "taskfabric": __version__,
        }
    )


# --- functions ------------------------------------------------------------------------------


@compute_router.post("/v3/functions")
async def register_function(request: Request, identity: Caller, service: Service) -> JSONResponse:
    body = parse_json_object(await request.body(), "function registration")
    parsed = await asyncio.to_thread(
        parse_function_registration, body, max_function_bytes=service.settings.max_function_bytes
    )
    record, _ = await service.functions.register(
        identity,
        name=parsed.name,
        body=parsed.body,
        python_version=parsed.python_version,
        description=parsed.description,
        public=parsed.public,
    )
    return JSONResponse({"function_uuid": str(record.function_id)})


@compute_router.get("/v2/functions/{function_id}")
async def get_function(function_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """The function's metadata; its code for its owner only."""
    view = await service.functions.describe(identity, function_id)
    body: dict[str, Any] = {
        "function_uuid": str(function_id),
        "function_name": view.record.name,
        "description": view.record.description,
        "public": view.record.public,
        "owner": view.owner,
        "metadata": {"python_version": view.record.python_version},
    }
    if view.record.owner_id == identity.user_id:
        full = await service.functions.describe(identity, function_id, include_body=True)
        code = full.record.body or b""
        body["function_code"] = code.removeprefix(GLOBUS_COMPUTE_BODY_PREFIX).decode("utf-8", errors="replace")
    return JSONResponse(body)


@compute_router.delete("/v2/functions/{function_id}")
async def delete_function(function_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    await service.functions.delete(identity, function_id)
    service.tasks.forget_function(function_id)
    return JSONResponse({"result": 200, "function_uuid": str(function_id)})


# --- submit and tasks -----------------------------------------------------------------------


@compute_router.post("/v3/endpoints/{endpoint_id}/submit")
async def submit(
    endpoint_id: uuid.UUID, request: Request, identity: Caller, service: Service, relay: Relay
) -> JSONResponse:
    """A batch from `Client.batch_run` / `Client.run` / the Executor."""
    settings = service.settings
    limits = SubmitLimits(max_tasks=settings.max_batch_tasks, max_payload_bytes=settings.max_payload_bytes)
    raw = await request.body()
    parsed = await asyncio.to_thread(lambda: parse_submit(parse_json_object(raw, "submit"), limits))
    await _check_group(service, identity, parsed.task_group_id)
    if parsed.create_queue:
        owner = await asyncio.to_thread(relay.declare_group_queue, identity.user_id, parsed.task_group_id)
        if owner != identity.user_id:
            raise _foreign_group(parsed.task_group_id)
    accepted = await service.tasks.submit(identity, endpoint_id, parsed.request)
    service.hub.accepted(accepted, identity.user_id)
    tasks: dict[str, list[str]] = {}
    for function_id, task_id in zip(parsed.function_order, accepted, strict=True):
        tasks.setdefault(str(function_id), []).append(str(task_id))
    return JSONResponse(
        {
            "request_id": str(uuid.uuid4()),
            "task_group_id": str(parsed.task_group_id),
            "endpoint_id": str(endpoint_id),
            "tasks": tasks,
        }
    )


async def _check_group(service: Forwarder, identity: Identity, task_group_id: uuid.UUID) -> None:
    """A task group with a result queue belongs to the user who made it."""
    owner = await service.runner.read(service.store.compute_groups.owner, task_group_id)
    if owner is not None and owner != identity.user_id:
        raise _foreign_group(task_group_id)


def _foreign_group(task_group_id: uuid.UUID) -> PermissionDenied:
    return PermissionDenied(f"task group {task_group_id} is another user's", code="FORBIDDEN")


def _task_body(record: TaskRecord) -> dict[str, Any]:
    return task_status_body(record.task_id, compute_status(record.status), compute_outcome(record))


@compute_router.get("/v2/tasks/{task_id}")
async def get_task(task_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    return JSONResponse(_task_body(await service.tasks.get(identity, task_id)))


@compute_router.post("/v2/batch_status")
async def batch_status(request: Request, identity: Caller, service: Service) -> JSONResponse:
    """`{"task_ids": [...]}` -> `{"results": {id: task}}`; unknown ids (and other users') answer
    status `unknown`, which the SDK keeps pending."""
    body = parse_json_object(await request.body(), "batch_status")
    values = body.get("task_ids")
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise invalid("task_ids: must be a list of task id strings")
    ids, malformed = parse_task_ids(values, limit=_MAX_TASK_IDS)
    found, unknown = await service.tasks.get_many(identity, ids)
    results = {str(task_id): _task_body(record) for task_id, record in found.items()}
    for task_id in [*map(str, unknown), *malformed]:
        results[task_id] = {"task_id": task_id, "status": "unknown", "reason": "unknown task"}
    return JSONResponse({"response": "batch", "results": results})


@compute_router.get("/v2/taskgroup/{task_group_id}")
async def get_task_group(task_group_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """The caller's tasks in the group (what `Executor.reload_tasks` re-attaches to)."""
    tasks: list[dict[str, Any]] = []
    after = None
    while True:
        query = TaskQuery(owner_id=identity.user_id, task_group_id=task_group_id, limit=_GROUP_PAGE, after=after)
        page = await service.tasks.list(query)
        tasks.extend({"id": str(summary.task_id), "created_at": summary.created_at} for summary in page.tasks)
        if page.next_after is None:
            break
        after = page.next_after
    if not tasks:
        raise NotFoundError(f"no task group {task_group_id}", code="NOT_FOUND")
    return JSONResponse({"taskgroup_id": str(task_group_id), "tasks": tasks})


@compute_router.get("/v2/get_amqp_result_connection_url")
async def get_result_connection_url(identity: Caller, relay: Relay) -> JSONResponse:
    """Fresh broker credentials that read only the caller's result queues."""
    url, prefix = await asyncio.to_thread(relay.issue_reader, identity.user_id)
    return JSONResponse({"connection_url": url, "queue_prefix": prefix})


# --- endpoints ------------------------------------------------------------------------------


@compute_router.get("/v2/endpoints")
async def list_endpoints(identity: Caller, service: Service) -> JSONResponse:
    visible = await service.endpoints.list_visible(identity)
    now, offline_after_s = time.time(), service.settings.endpoint_offline_after_s
    rows = []
    for record, permission in visible:
        info = endpoint_info(record, now=now, offline_after_s=offline_after_s)
        rows.append(
            {
                "uuid": str(record.endpoint_id),
                "name": record.name,
                "display_name": info.display_name or record.name,
                "status": str(info.status),
                "owner": record.owner_id == identity.user_id,
                "role": permission.role.value,
            }
        )
    return JSONResponse(rows)


async def _endpoint(service: Forwarder, identity: Identity, endpoint_id: uuid.UUID) -> dict[str, Any]:
    record, permission = await service.endpoints.visible(identity, endpoint_id)
    info = endpoint_info(record, now=time.time(), offline_after_s=service.settings.endpoint_offline_after_s)
    body = render(info)
    if not permission.role.may_manage:  # what /v1 shows a submitter of another user's endpoint
        body = {key: value for key, value in body.items() if key in SUBMITTER_FIELDS}
    body.update({"uuid": str(endpoint_id), "role": permission.role.value, "status": str(info.status)})
    return body


@compute_router.get("/v2/endpoints/{endpoint_id}")
async def get_endpoint(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    return JSONResponse(await _endpoint(service, identity, endpoint_id))


@compute_router.get("/v2/endpoints/{endpoint_id}/status")
async def get_endpoint_status(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """`{"status": "online" | "offline" | ..., "details": {...}}` (`Client.get_endpoint_status`)."""
    body = await _endpoint(service, identity, endpoint_id)
    status = body.pop("status")
    return JSONResponse({"status": status, "details": body})


@compute_router.get("/v3/endpoints/{endpoint_id}/allowed_functions")
async def get_allowed_functions(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """The endpoint's allow-list (`functions` is empty when any function may run)."""
    allowed = await service.allow_lists.get(identity, endpoint_id)
    functions = [] if allowed is None else sorted(str(function_id) for function_id in allowed)
    return JSONResponse({"endpoint_id": str(endpoint_id), "functions": functions, "restricted": allowed is not None})


@compute_router.api_route("/v2/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
async def unsupported_v2(path: str) -> Response:
    return _unsupported(f"/v2/{path}")


@compute_router.api_route("/v3/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
async def unsupported_v3(path: str) -> Response:
    return _unsupported(f"/v3/{path}")


def _unsupported(path: str) -> Response:
    message = (
        f"{path[:200]} is not part of taskfabric's Globus Compute API (register endpoints with "
        "`taskfabric endpoint`; see docs/globus-compute.md)"
    )
    return JSONResponse({"error": {"code": "NOT_SUPPORTED", "message": message}}, status_code=404)
