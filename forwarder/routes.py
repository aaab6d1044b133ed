"""The HTTP routes of API v1 (see docs/api.md). Each handler parses, checks, calls one service
of the `Forwarder`, and renders the answer; errors are raised and rendered by `http_errors`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgpack
import pydantic
from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from taskfabric import __version__
from taskfabric.errors import ServiceError
from taskfabric.forwarder import schemas
from taskfabric.forwarder.access import EndpointPermission, EndpointRole, FunctionAccess, GrantLimits, PrincipalKind
from taskfabric.forwarder.activity import RECENT_FAILURES_S, activity_body, parse_failures, parse_window_s
from taskfabric.forwarder.endpoint_sharing import GrantRequest, audit_event_body, parse_limit, parse_since
from taskfabric.forwarder.functions import FunctionGrantRequest
from taskfabric.forwarder.groups import GroupDetails
from taskfabric.forwarder.limits import bearer_token, declared_length, identity_of, peer_of
from taskfabric.forwarder.listing import page_body, parse_task_query
from taskfabric.forwarder.records import EndpointRecord, Identity
from taskfabric.forwarder.requests import (
    SubmitLimits,
    check_python_version,
    check_text,
    decode_base64,
    invalid,
    parse_submit_json,
    parse_submit_msgpack,
    parse_task_ids,
    parse_uuid,
    too_large,
)
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.stream import serve_stream
from taskfabric.forwarder.views import endpoint_info, function_info, group_info, group_member, task_info
from taskfabric.protocol.api import (
    RESULT_SHA256_HEADER,
    RESULT_WORKER_PYTHON_HEADER,
    EndpointInfo,
    EndpointRegistered,
    GroupMember,
    TaskInfo,
    render,
)
from taskfabric.protocol.data_refs import DATA_REF_HEADER
from taskfabric.protocol.result_uploads import RESULT_GRANT_HEADER

__all__ = [
    "API_VERSION",
    "AUTH_SCHEME",
    "MAX_CANCEL_TASK_IDS",
    "MIN_CLIENT_VERSION",
    "SUBMITTER_FIELDS",
    "peer_address",
    "router",
    "websocket_router",
]

API_VERSION = 1
MIN_CLIENT_VERSION = "0.1.0"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
_MAX_TASK_IDS = 10_000
#: a batch answer inlines results kept in the blob store up to this many bytes in all; the others
#: come as references (`result_sha256`, `result_size`) to read from GET /v1/tasks/{id}/result, so
#: one request never makes the forwarder hold 10,000 large results at once
_BATCH_RESULT_BYTES = 16 * 1024 * 1024
#: ids per cancel request (each may cost a control message and a guarded update)
MAX_CANCEL_TASK_IDS = 1000
#: request bodies from this size on are parsed on a worker thread (see `_sized`)
_OFF_LOOP_BYTES = 256 * 1024
_T = TypeVar("_T")

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="a token from `taskfabric admin create-token`, or Globus Auth")
#: the OpenAPI security scheme of every route that needs a token (`RequestGuard` reads it)
AUTH_SCHEME = _bearer.scheme_name
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": schemas.ErrorBody} for status in (400, 401, 403, 404, 413, 422, 429, 503)
}

router = APIRouter(prefix="/v1", responses=_ERRORS)
websocket_router = APIRouter(prefix="/v1")


def _forwarder(request: Request) -> Forwarder:
    forwarder: Forwarder = request.app.state.forwarder
    return forwarder


async def forwarder_of(request: Request) -> Forwarder:  # async: FastAPI runs sync dependencies on threads
    return _forwarder(request)


async def current_identity(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Identity:
    """The caller. `RequestGuard` authenticated it on the headers already (and refused the request
    otherwise); checking again here is defence in depth, without a second token lookup."""
    known = identity_of(request.scope)
    if known is not None:
        return known
    return await _forwarder(request).authenticate(
        credentials.credentials if credentials else None, peer=peer_address(request)
    )


def peer_address(connection: Request | WebSocket) -> str:
    """The client's address as "host:port" (for logs and the audit log; a proxy's, behind one)."""
    return peer_of(connection.scope)


Caller = Annotated[Identity, Depends(current_identity)]
Service = Annotated[Forwarder, Depends(forwarder_of)]


async def _sized(size: int, work: Callable[..., _T], *args: Any) -> _T:
    """`work(*args)`, on a worker thread when its input is large (`size` bytes): parsing a large
    body on the event loop would stall every other request and stream meanwhile."""
    if size < _OFF_LOOP_BYTES:
        return work(*args)
    return await asyncio.to_thread(work, *args)


# --- version and identity -----------------------------------------------------------------


@router.get("/version", response_model=schemas.Version, responses={401: {}})
async def get_version() -> JSONResponse:
    """The API and service versions (no authentication)."""
    return JSONResponse({"api": API_VERSION, "version": __version__, "min_client_version": MIN_CLIENT_VERSION})


@router.get("/whoami", responses={200: {"model": schemas.WhoAmI}})
async def whoami(identity: Caller) -> JSONResponse:
    return JSONResponse({"user_id": str(identity.user_id), "username": identity.username, "auth": identity.auth})


# --- functions ----------------------------------------------------------------------------


@router.post(
    "/functions",
    status_code=201,
    responses={200: {"model": schemas.FunctionRegistered}, 201: {"model": schemas.FunctionRegistered}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schemas.FunctionRegistration.model_json_schema()}},
        }
    },
)
async def register_function(request: Request, identity: Caller, service: Service) -> JSONResponse:
    """Register a function; the same body again (same owner) returns the existing id with 200.
    The body is read here, not by FastAPI, so that a large one is parsed on a worker thread."""
    raw = await request.body()
    body = await _sized(len(raw), _function_registration, raw)
    limit = service.settings.max_function_bytes
    name = check_text(body.name, "name", max_length=256)
    python_version = check_python_version(body.python_version, "python_version")
    function_body = await _sized(len(body.body), decode_base64, body.body, "body", limit, "max_function_bytes")
    if len(function_body) > limit:
        raise too_large("body", len(function_body), limit, "max_function_bytes")
    if not function_body:
        raise invalid("body: must not be empty")
    description = None if body.description is None else check_text(body.description, "description", max_length=4096)
    record, created = await service.functions.register(
        identity,
        name=name,
        body=function_body,
        python_version=python_version,
        description=description,
        public=body.public,
    )
    return JSONResponse(
        {"function_id": str(record.function_id), "content_hash": record.content_hash},
        status_code=201 if created else 200,
    )


def _function_registration(raw: bytes) -> schemas.FunctionRegistration:
    """The parsed body, or the same 422/400 FastAPI gives a body it validates itself."""
    try:
        return schemas.FunctionRegistration.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        errors = [{**error, "loc": ("body", *error.get("loc", ()))} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


@router.get("/functions", responses={200: {"model": schemas.FunctionList}})
async def list_functions(
    identity: Caller,
    service: Service,
    shared: Annotated[bool, Query(description="also other users' functions shared with you, or public")] = False,
) -> JSONResponse:
    """Your functions; with `shared=true`, then those shared with you (see `owner`)."""
    views = await service.functions.list(identity, shared=shared)
    return JSONResponse({"functions": [function_info(view.record, owner=view.owner) for view in views]})


@router.get("/functions/{function_id}", responses={200: {"model": schemas.FunctionInfo}})
async def get_function(
    function_id: uuid.UUID, identity: Caller, service: Service, include_body: Annotated[bool, Query()] = False
) -> JSONResponse:
    """A function's metadata, for anyone it is shared with; its body (`include_body`) for its
    owner only (403 for others; 404 for a function not shared with you)."""
    view = await service.functions.describe(identity, function_id, include_body=include_body)
    return JSONResponse(function_info(view.record, include_body=include_body, owner=view.owner))


@router.delete("/functions/{function_id}", status_code=204, response_class=Response)
async def delete_function(function_id: uuid.UUID, identity: Caller, service: Service) -> Response:
    """Delete a function; tasks already submitted still run (their messages carry the body)."""
    await service.functions.delete(identity, function_id)
    service.tasks.forget_function(function_id)
    return Response(status_code=204)


# --- function sharing (issue 13) ----------------------------------------------------------


@router.get("/functions/{function_id}/access", responses={200: {"model": schemas.FunctionAccessInfo}})
async def get_function_access(function_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """Who the function is shared with (its owner only)."""
    access = await service.functions.access(identity, function_id)
    return JSONResponse(await _function_access_body(service, access, owner=identity.username))


@router.put("/functions/{function_id}/access", responses={200: {"model": schemas.FunctionAccessInfo}})
async def set_function_access(
    function_id: uuid.UUID, body: schemas.FunctionAccessBody, identity: Caller, service: Service
) -> JSONResponse:
    """Replace the function's sharing: `public` and the whole list of grants (its owner only)."""
    grants = [FunctionGrantRequest(user=grant.user, group=grant.group) for grant in body.grants]
    access = await service.functions.set_access(identity, function_id, public=body.public, grants=grants)
    service.tasks.forget_function_access(function_id)
    return JSONResponse(await _function_access_body(service, access, owner=identity.username))


async def _function_access_body(service: Forwarder, access: FunctionAccess, *, owner: str) -> dict[str, Any]:
    user_ids = [grant.principal.principal_id for grant in access.grants if grant.principal.kind is PrincipalKind.USER]
    names = await service.functions.usernames(user_ids)
    grants: list[dict[str, Any]] = []
    for grant in sorted(
        access.grants, key=lambda grant: (grant.principal.kind.value, str(grant.principal.principal_id))
    ):
        principal_id = grant.principal.principal_id
        if grant.principal.kind is PrincipalKind.USER:
            grants.append(
                {"user": names.get(principal_id, ""), "user_id": str(principal_id), "granted_at": grant.granted_at}
            )
        else:
            grants.append({"group": str(principal_id), "granted_at": grant.granted_at})
    return {"function_id": str(access.function_id), "owner": owner, "public": access.public, "grants": grants}


# --- endpoints ----------------------------------------------------------------------------


@router.post(
    "/endpoints",
    status_code=201,
    responses={
        200: {"model": EndpointRegistered},
        201: {"model": EndpointRegistered},
        409: {"model": schemas.ErrorBody},
    },
)
async def register_endpoint(
    body: schemas.EndpointRegistration, request: Request, identity: Caller, service: Service
) -> JSONResponse:
    """Register (or re-register) an endpoint: its queues, a broker user, fresh credentials."""
    settings = service.settings
    if body.metadata is not None:
        size = len(json.dumps(body.metadata, separators=(",", ":")))
        if size > settings.max_metadata_bytes:
            raise too_large("metadata", size, settings.max_metadata_bytes, "max_metadata_bytes")
    registration = await service.endpoints.register(
        identity, name=body.name, endpoint_id=body.endpoint_id, metadata=body.metadata
    )
    allowed = await _registered_allow_list(service, identity, registration.endpoint, body.allowed_functions)
    service.audit.record(
        "register_endpoint",
        user=identity.username,
        peer=peer_address(request),
        object=f"endpoint:{registration.endpoint.endpoint_id}",
    )
    answer = EndpointRegistered(
        endpoint_id=registration.endpoint.endpoint_id,
        name=registration.endpoint.name,
        broker=registration.broker,
        status_period_s=settings.status_period_s,
        allowed_functions=allowed,
    )
    return JSONResponse(render(answer), status_code=201 if registration.created else 200)


@router.get("/endpoints", responses={200: {"model": schemas.EndpointList}})
async def list_endpoints(identity: Caller, service: Service) -> JSONResponse:
    """Your endpoints, then those shared with you, each with your `role` and its `owner`."""
    visible = await service.endpoints.list_visible(identity)
    others = {record.owner_id for record, _ in visible if record.owner_id != identity.user_id}
    owners = await service.endpoints.sharing.usernames(others) if others else {}
    owners[identity.user_id] = identity.username
    return JSONResponse(
        {"endpoints": [_shared_endpoint_body(service, record, permission, owners) for record, permission in visible]}
    )


@router.get("/endpoints/{endpoint_id}", responses={200: {"model": EndpointInfo}})
async def get_endpoint(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """The endpoint, for its owner and anyone with a role on it (submit: name, status, owner)."""
    return JSONResponse(await _visible_endpoint_body(service, identity, endpoint_id))


@router.get("/endpoints/{endpoint_id}/status", responses={200: {"model": EndpointInfo}})
async def get_endpoint_status(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    return JSONResponse(await _visible_endpoint_body(service, identity, endpoint_id))


@router.delete("/endpoints/{endpoint_id}", status_code=204, response_class=Response)
async def delete_endpoint(endpoint_id: uuid.UUID, request: Request, identity: Caller, service: Service) -> Response:
    """Delete an endpoint: its broker user, its queues; its unfinished tasks fail ENDPOINT_DELETED."""
    await service.endpoints.delete(identity, endpoint_id)
    service.audit.record(
        "delete_endpoint", user=identity.username, peer=peer_address(request), object=f"endpoint:{endpoint_id}"
    )
    return Response(status_code=204)


# --- endpoint allow-lists (issue 13) ------------------------------------------------------


async def _registered_allow_list(
    service: Forwarder, identity: Identity, record: EndpointRecord, allowed: list[uuid.UUID] | None
) -> tuple[uuid.UUID, ...] | None:
    """Store the allow-list an agent registered with (None keeps the stored one); the list in force."""
    updated = await service.allow_lists.registered(identity, record, allowed)
    if updated.allowed_functions != record.allowed_functions:
        service.endpoints.forget_target(record.endpoint_id)
    return None if updated.allowed_functions is None else tuple(sorted(updated.allowed_functions, key=str))


@router.get("/endpoints/{endpoint_id}/allowed_functions", responses={200: {"model": schemas.AllowedFunctionsInfo}})
async def get_allowed_functions(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """The functions the endpoint runs (null: any); for anyone with a role on it."""
    allowed = await service.allow_lists.get(identity, endpoint_id)
    return JSONResponse(_allowed_functions_body(endpoint_id, allowed))


@router.put("/endpoints/{endpoint_id}/allowed_functions", responses={200: {"model": schemas.AllowedFunctionsInfo}})
async def set_allowed_functions(
    endpoint_id: uuid.UUID, body: schemas.AllowedFunctionsBody, identity: Caller, service: Service
) -> JSONResponse:
    """Replace the endpoint's allow-list (its owner or a manager). The agent's config.yaml, when it
    sets one, replaces it again at the agent's next registration."""
    allowed = None if body.allowed_functions is None else list(dict.fromkeys(body.allowed_functions))
    stored = await service.allow_lists.set(identity, endpoint_id, allowed)
    service.endpoints.forget_target(endpoint_id)
    return JSONResponse(_allowed_functions_body(endpoint_id, stored))


def _allowed_functions_body(endpoint_id: uuid.UUID, allowed: frozenset[uuid.UUID] | None) -> dict[str, Any]:
    listed = None if allowed is None else sorted(str(function_id) for function_id in allowed)
    return {"endpoint_id": str(endpoint_id), "allowed_functions": listed}


def _endpoint_info(service: Forwarder, record: EndpointRecord) -> EndpointInfo:
    return endpoint_info(record, now=time.time(), offline_after_s=service.settings.endpoint_offline_after_s)


# --- endpoint sharing (issue 13) ----------------------------------------------------------

#: what a user with the submit role sees of another user's endpoint
SUBMITTER_FIELDS = (
    "endpoint_id",
    "name",
    "display_name",
    "status",
    "status_reason",
    "last_heartbeat_at",
    "created_at",
    "owner",
    "role",
)


def _shared_endpoint_body(
    service: Forwarder, record: EndpointRecord, permission: EndpointPermission, owners: dict[uuid.UUID, str]
) -> dict[str, Any]:
    """An endpoint as the caller may see it: everything for its owner and managers; name,
    status and owner for a submitter."""
    info = dataclasses.replace(
        _endpoint_info(service, record),
        owner=owners.get(record.owner_id, str(record.owner_id)),
        role=permission.role.value,
    )
    body = render(info)
    if permission.role.may_manage:
        return body
    return {key: body[key] for key in SUBMITTER_FIELDS}


async def _visible_endpoint_body(service: Forwarder, identity: Identity, endpoint_id: uuid.UUID) -> dict[str, Any]:
    record, permission = await service.endpoints.visible(identity, endpoint_id)
    if permission.is_owner:
        owners = {record.owner_id: identity.username}
    else:
        owners = await service.endpoints.sharing.usernames({record.owner_id})
    return _shared_endpoint_body(service, record, permission, owners)


@router.get("/endpoints/{endpoint_id}/access", responses={200: {"model": schemas.EndpointAccessDocument}})
async def get_endpoint_access(endpoint_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """Who besides its owner may use the endpoint (owner and managers only)."""
    sharing = service.endpoints.sharing
    await sharing.require_manager(identity, endpoint_id)
    return JSONResponse(await sharing.document(endpoint_id))


@router.put("/endpoints/{endpoint_id}/access", responses={200: {"model": schemas.EndpointAccessDocument}})
async def put_endpoint_access(
    endpoint_id: uuid.UUID, body: schemas.EndpointAccessBody, request: Request, identity: Caller, service: Service
) -> JSONResponse:
    """Replace the endpoint's whole access document (owner and managers only). Revoking refuses
    the next submit at once; tasks accepted before still run."""
    sharing = service.endpoints.sharing
    await sharing.require_manager(identity, endpoint_id)
    grants = [
        GrantRequest(
            user=grant.user,
            group=grant.group,
            role=EndpointRole(grant.role),
            limits=GrantLimits(max_waiting_tasks=grant.max_waiting_tasks, max_tasks_per_day=grant.max_tasks_per_day),
        )
        for grant in body.grants
    ]
    document = await sharing.replace(identity, endpoint_id, public=body.public, grants=grants)
    service.audit.record(
        "endpoint.access", user=identity.username, peer=peer_address(request), object=f"endpoint:{endpoint_id}"
    )
    return JSONResponse(document)


@router.get("/endpoints/{endpoint_id}/audit", responses={200: {"model": schemas.AuditList}})
async def get_endpoint_audit(
    endpoint_id: uuid.UUID,
    identity: Caller,
    service: Service,
    limit: Annotated[str | None, Query(description="events per page, 1 to 1000 (default 100)")] = None,
    before: Annotated[
        str | None, Query(description="only events older than this time (seconds since the epoch)")
    ] = None,
) -> JSONResponse:
    """The endpoint's sharing changes and cross-user submissions, newest first (owner and managers)."""
    sharing = service.endpoints.sharing
    await sharing.require_manager(identity, endpoint_id)
    page_limit = parse_limit(limit)
    before_at = parse_since(before, "before")
    events = await service.runner.read(
        service.store.access.audit_of_endpoint, endpoint_id, limit=page_limit, before=before_at
    )
    names = await sharing.usernames({event.actor_id for event in events})
    return JSONResponse({"events": [audit_event_body(event, names) for event in events]})


# --- tasks --------------------------------------------------------------------------------


@router.post(
    "/endpoints/{endpoint_id}/tasks",
    status_code=201,
    responses={201: {"model": schemas.TaskSubmitted, "content": {MSGPACK: {}}}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schemas.SUBMIT_BODY_SCHEMA},
                MSGPACK: {"schema": schemas.SUBMIT_BODY_SCHEMA},
            },
        }
    },
)
async def submit_tasks(endpoint_id: uuid.UUID, request: Request, identity: Caller, service: Service) -> Response:
    """Submit a batch of tasks (JSON with base64 payloads, or msgpack with raw bytes)."""
    settings = service.settings
    limits = SubmitLimits(max_tasks=settings.max_batch_tasks, max_payload_bytes=settings.max_payload_bytes)
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    body = await request.body()
    binary = content_type in _MSGPACK_TYPES
    if binary:
        parsed = await _sized(len(body), parse_submit_msgpack, body, limits)
    elif content_type in ("application/json", ""):
        parsed = await _sized(len(body), parse_submit_json, body, limits)
    else:
        raise ServiceError(
            f"unsupported content type {content_type[:64]!r}: use application/json or {MSGPACK}",
            status=415,
            code="UNSUPPORTED_MEDIA_TYPE",
        )
    accepted = await service.tasks.submit(identity, endpoint_id, parsed)
    service.hub.accepted(accepted, identity.user_id)
    if parsed.binary_ids:
        answer = msgpack.packb({"task_ids": [task_id.bytes for task_id in accepted]}, use_bin_type=True)
        return Response(answer, status_code=201, media_type=MSGPACK)
    task_ids = [str(task_id) for task_id in accepted]
    if binary:
        return Response(msgpack.packb({"task_ids": task_ids}), status_code=201, media_type=MSGPACK)
    return JSONResponse({"task_ids": task_ids}, status_code=201)


@router.get("/tasks", responses={200: {"model": schemas.TaskList}})
async def list_tasks(
    identity: Caller,
    service: Service,
    status: Annotated[str | None, Query(description="waiting | running | success | failed | cancelled")] = None,
    endpoint_id: Annotated[str | None, Query(description="only this endpoint's tasks")] = None,
    function_id: Annotated[str | None, Query(description="only this function's tasks")] = None,
    group_id: Annotated[str | None, Query(description="only this task group's tasks")] = None,
    since: Annotated[str | None, Query(description="created at or after (seconds since the epoch)")] = None,
    limit: Annotated[str | None, Query(description="tasks per page, 1 to 1000 (default 100)")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    all_users: Annotated[
        str | None, Query(description="with endpoint_id: every user's tasks on it (its owner and managers only)")
    ] = None,
) -> JSONResponse:
    """Your tasks, newest first, a page at a time (follow `next_cursor` until it is null)."""
    query = parse_task_query(
        identity.user_id,
        status=status,
        endpoint_id=endpoint_id,
        function_id=function_id,
        group_id=group_id,
        since=since,
        limit=limit,
        cursor=cursor,
        all_users=all_users,
    )
    if query.all_users:
        assert query.endpoint_id is not None  # parse_task_query requires it
        await service.endpoints.sharing.require_manager(identity, query.endpoint_id)
    page = await service.tasks.list(query)
    if query.all_users:
        names = await service.endpoints.sharing.usernames(
            {summary.owner_id for summary in page.tasks if summary.owner_id}
        )
    else:
        names = {identity.user_id: identity.username}
    return JSONResponse(page_body(page, names))


@router.get("/tasks/{task_id}", responses={200: {"model": TaskInfo}})
async def get_task(task_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    return JSONResponse(render(task_info(await service.tasks.get(identity, task_id))))


_OCTETS = "application/octet-stream"


@router.get("/tasks/{task_id}/result", response_class=Response, responses={200: {"content": {_OCTETS: {}}}})
async def get_task_result(task_id: uuid.UUID, identity: Caller, service: Service) -> Response:
    """The raw bytes of a successful task's result (serialized as the client sent it back),
    streamed from the blob store for a large one, with their sha256 in `X-Taskfabric-Result-Sha256`.
    409 `RESULT_NOT_AVAILABLE`: the task has no result (pending, failed, cancelled); 500
    `RESULT_INTEGRITY` naming the task: its stored result does not match the recorded digest."""
    body = await service.tasks.result_body(identity, task_id)
    headers = {
        "Content-Length": str(body.size),
        RESULT_SHA256_HEADER: body.sha256,
        # from the endpoint: only printable ASCII goes into a header
        RESULT_WORKER_PYTHON_HEADER: "".join(c for c in body.worker_python[:64] if " " <= c <= "~"),
    }
    if body.chunks is None:
        return Response(body.data or b"", media_type=_OCTETS, headers=headers)
    return StreamingResponse(body.chunks, media_type=_OCTETS, headers=headers)


@router.put(
    "/tasks/{task_id}/result-blob",
    responses={200: {"model": schemas.ResultUploaded}, 400: {"model": schemas.ErrorBody}, 403: {}, 413: {}},
    openapi_extra={"requestBody": {"content": {_OCTETS: {}}, "required": True}},
)
async def put_result_blob(task_id: uuid.UUID, request: Request, service: Service) -> JSONResponse:
    """A worker uploads a large result (the raw serialized bytes) with the task's grant in
    `X-Taskfabric-Result-Grant` (no bearer token). Streamed into the blob store; answers the blob's
    name, size, sha256 and the receipt the worker's result must carry. 403 `RESULT_GRANT_INVALID`
    (missing, altered, another task's or expired grant); 413 above `quotas.max_result_bytes`."""
    blob = await service.result_uploads.put(
        task_id,
        request.headers.get(RESULT_GRANT_HEADER),
        request.stream(),
        now=time.time(),
        size=declared_length(request.scope),
    )
    return JSONResponse(dataclasses.asdict(blob))


# --- arguments by reference (issue 15) -----------------------------------------------------


@router.put(
    "/data/{sha256}",
    responses={200: {"model": schemas.DataUploaded}, 400: {"model": schemas.ErrorBody}, 413: {}},
    openapi_extra={"requestBody": {"content": {_OCTETS: {}}, "required": True}},
)
async def put_data(sha256: str, request: Request, identity: Caller, service: Service) -> JSONResponse:
    """Upload an argument to pass by reference (the raw bytes; their sha256 names it). Answers a
    signed, expiring read reference bound to you. 400 `DATA_DIGEST_MISMATCH` when the body does
    not hash to `sha256`; 413 above `max_data_bytes`. Uploading the same bytes again renews it."""
    return JSONResponse(await service.data.put(identity, sha256, request.stream()))


@router.get("/data/{sha256}", response_class=Response, responses={200: {"content": {_OCTETS: {}}}, 403: {}})
async def get_data(sha256: str, request: Request, service: Service) -> Response:
    """An uploaded argument, for the worker holding its reference (`X-Taskfabric-Data-Ref`; no
    bearer token). 403 `DATA_REF_INVALID` / `DATA_REF_EXPIRED`; 404 when it is no longer stored.
    Streamed as stored: the worker checks the size and sha256."""
    read = await asyncio.to_thread(service.data.open, sha256, request.headers.get(DATA_REF_HEADER))
    # no Content-Length from the signed size: a blob changed on disk must still arrive whole, for
    # the worker's digest check to name it (a short body would look like a network failure)
    return StreamingResponse(read.chunks, media_type=_OCTETS, headers={RESULT_SHA256_HEADER: read.sha256})


@router.post("/tasks/batch", responses={200: {"model": schemas.BatchStatus}})
async def batch_status(body: schemas.TaskIds, identity: Caller, service: Service) -> JSONResponse:
    """Many tasks at once; ids that are unknown or not yours are listed in `unknown`."""
    ids, malformed = parse_task_ids(body.task_ids, limit=_MAX_TASK_IDS)
    found, unknown = await service.tasks.get_many(identity, ids, result_budget_bytes=_BATCH_RESULT_BYTES)
    return JSONResponse(
        {
            "tasks": {str(task_id): render(task_info(record)) for task_id, record in found.items()},
            "unknown": [str(task_id) for task_id in unknown] + malformed,
        }
    )


@router.post("/tasks/cancel", responses={200: {"model": dict[str, bool]}})
async def cancel_tasks(body: schemas.CancelRequest, identity: Caller, service: Service) -> JSONResponse:
    """Cancel tasks: `{id: true}` for each task this call moved to `cancelled`, `{id: false}` for
    one already finished, unknown or not yours (indistinguishable on purpose)."""
    count = len(body.task_ids)
    if count == 0:
        raise invalid("task_ids: the list is empty")
    if count > MAX_CANCEL_TASK_IDS:
        raise invalid(f"task_ids: {count} ids, above the limit of {MAX_CANCEL_TASK_IDS} per cancel request")
    ids = list(dict.fromkeys(parse_uuid(value, f"task_ids[{index}]") for index, value in enumerate(body.task_ids)))
    answers, cancelled = await service.tasks.cancel(identity, ids)
    service.hub.publish(cancelled)
    return JSONResponse({str(task_id): answer for task_id, answer in answers.items()})


# --- activity -----------------------------------------------------------------------------


@router.get("/activity", responses={200: {"model": schemas.Activity}})
async def get_activity(
    identity: Caller,
    service: Service,
    window_s: Annotated[str | None, Query(description="seconds back to count finished tasks, up to 3600")] = None,
    failures: Annotated[str | None, Query(description="list this many recent failures, 0 to 100 (default 10)")] = None,
) -> JSONResponse:
    """Your tasks per endpoint (unfinished now; finished within `window_s`) and your newest
    failures: what `taskfabric top` shows (see `forwarder/activity.py`)."""
    window = parse_window_s(window_s)
    count = parse_failures(failures)
    now = time.time()
    activity = await service.tasks.activity(
        identity, since=now - window, failures=count, failures_since=now - RECENT_FAILURES_S
    )
    return JSONResponse(activity_body(activity, as_of=now, window_s=window))


# --- sharing: groups ---------------------------------------------------------------------


@router.post(
    "/groups", status_code=201, responses={201: {"model": schemas.GroupDetails}, 409: {"model": schemas.ErrorBody}}
)
async def create_group(
    body: schemas.GroupCreation, request: Request, identity: Caller, service: Service
) -> JSONResponse:
    """Create a group you own (you are its first member, role `owner`)."""
    group = await service.groups.create(identity, name=body.name, description=body.description)
    _audit_group(service, request, identity, "group.create", group.group_id)
    details = await service.groups.get(identity, group.group_id)
    return JSONResponse(_group_details(details), status_code=201)


@router.get("/groups", responses={200: {"model": schemas.GroupList}})
async def list_groups(identity: Caller, service: Service) -> JSONResponse:
    """The groups you belong to, with your role in each."""
    groups = await service.groups.list(identity)
    return JSONResponse({"groups": [render(group_info(group)) for group in groups]})


@router.get("/groups/{group_id}", responses={200: {"model": schemas.GroupDetails}})
async def get_group(group_id: uuid.UUID, identity: Caller, service: Service) -> JSONResponse:
    """A group and its members (members only: 404 for anyone else)."""
    return JSONResponse(_group_details(await service.groups.get(identity, group_id)))


@router.delete("/groups/{group_id}", status_code=204, response_class=Response)
async def delete_group(group_id: uuid.UUID, request: Request, identity: Caller, service: Service) -> Response:
    """Delete a group (its owner only): its members and its grants on endpoints and functions go."""
    await service.groups.delete(identity, group_id)
    _audit_group(service, request, identity, "group.delete", group_id)
    return Response(status_code=204)


@router.post(
    "/groups/{group_id}/members",
    status_code=201,
    responses={200: {"model": GroupMember}, 201: {"model": GroupMember}, 409: {"model": schemas.ErrorBody}},
)
async def add_group_member(
    group_id: uuid.UUID, body: schemas.MemberAddition, request: Request, identity: Caller, service: Service
) -> JSONResponse:
    """Add a user (201) or change a member's role (200); owner and managers (managers: the owner)."""
    member, added = await service.groups.set_member(identity, group_id, user=body.user, role=body.role)
    _audit_group(service, request, identity, "group.add_member", group_id, f" user:{member.username}")
    return JSONResponse(render(group_member(member)), status_code=201 if added else 200)


@router.delete("/groups/{group_id}/members/{user}", status_code=204, response_class=Response)
async def remove_group_member(
    group_id: uuid.UUID, user: str, request: Request, identity: Caller, service: Service
) -> Response:
    """Remove a member (username or user id); anyone but the owner may remove themselves."""
    await service.groups.remove_member(identity, group_id, user=user)
    _audit_group(service, request, identity, "group.remove_member", group_id, f" user:{user[:64]}")
    return Response(status_code=204)


def _group_details(details: GroupDetails) -> dict[str, Any]:
    body = render(group_info(details.group, role=details.role.value))
    body["members"] = [render(group_member(member)) for member in details.members]
    return body


def _audit_group(
    service: Forwarder, request: Request, identity: Identity, action: str, group_id: uuid.UUID, extra: str = ""
) -> None:
    service.audit.record(action, user=identity.username, peer=peer_address(request), object=f"group:{group_id}{extra}")


# --- results stream -----------------------------------------------------------------------


@websocket_router.websocket("/results/ws")
async def results_stream(websocket: WebSocket) -> None:
    """Subscribe to task ids; receive their results as msgpack frames (see docs/api.md)."""
    forwarder: Forwarder = websocket.app.state.forwarder
    peer = peer_address(websocket)
    token = bearer_token(websocket.headers.get("authorization"))
    try:
        identity = await forwarder.authenticate(token, peer=peer)
    except ServiceError as exc:
        # INFO: a refused handshake is the client's problem, not the forwarder's
        log.info("refused a results stream handshake from %s: %s", peer, exc.code)
        await _deny(websocket, exc)
        return
    assert token is not None  # authenticate refuses a missing token

    async def recheck() -> str | None:
        return await forwarder.recheck(token, identity)

    await websocket.accept()
    await serve_stream(
        websocket,
        identity.user_id,
        hub=forwarder.hub,
        store=forwarder.store,
        runner=forwarder.runner,
        limits=forwarder.stream_limits,
        recheck=recheck,
        recheck_s=forwarder.recheck_s,
    )


async def _deny(websocket: WebSocket, exc: ServiceError) -> None:
    """Refuse the handshake with the HTTP status (when the server supports it), else close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"error": {"code": exc.code, "message": str(exc)}}
        await websocket.send_denial_response(
            JSONResponse(body, status_code=exc.status, headers={"WWW-Authenticate": "Bearer"})
        )
    else:
        await websocket.close(code=1008, reason=str(exc)[:120])
