"""Error responses: one body shape for every failure, `{"error": {"code", "message"}}`.

The exception handlers make sure no input produces a 500: taskfabric's `ServiceError`s carry their
status and code (a `QuotaExceeded`'s 429 adds `Retry-After`), FastAPI's validation errors become
400 (malformed JSON, bad ids in the path) or 422 (field-level detail), store and broker outages
become 503. A 500 is left only for bugs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskfabric.errors import BrokerError, QuotaExceeded, ServiceError, StoreError

__all__ = ["error_response", "install_error_handlers", "service_error_code"]

log = logging.getLogger(__name__)

_CODE_BY_STATUS = {
    400: "INVALID_REQUEST",
    401: "AUTHENTICATION_REQUIRED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_REQUEST",
    429: "QUOTA_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    detail: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def service_error_code(exc: ServiceError) -> str:
    """The `code` of the error body: the error's own, else the one of its status."""
    return exc.code if exc.code != type(exc).__name__ else _CODE_BY_STATUS.get(exc.status, "ERROR")


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    code = service_error_code(exc)
    if isinstance(exc, QuotaExceeded):
        return _quota_exceeded(exc, code)
    return error_response(exc.status, code, str(exc))


def _quota_exceeded(exc: QuotaExceeded, code: str) -> JSONResponse:
    """429 with `Retry-After` in whole seconds, rounded up (RFC 9110; never 0, which a client would
    read as "at once"), and the quota's key and value beside the message."""
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    error = {"code": code, "message": str(exc), "quota": exc.quota, "limit": exc.limit}
    return JSONResponse({"error": error}, status_code=exc.status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(400, "INVALID_REQUEST", "the body is not valid JSON")
    path_errors = [error for error in errors if tuple(error.get("loc", ()))[:1] == ("path",)]
    if path_errors:
        names = sorted({str(error["loc"][-1]) for error in path_errors})
        return error_response(400, "INVALID_REQUEST", f"not a valid id: {', '.join(names)}")
    detail = [_error_detail(error) for error in errors]
    summary = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in detail[:5])
    return error_response(422, "INVALID_REQUEST", f"invalid request: {summary}", detail=detail)


def _error_detail(error: Any) -> dict[str, Any]:
    # only JSON-safe parts: pydantic's `input` and `ctx` may hold anything
    loc = [part if isinstance(part, (int, str)) else str(part) for part in error.get("loc", ())]
    return {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, f"HTTP_{exc.status_code}")
    message = str(exc.detail) if exc.detail else code
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("store failure during %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "STORE_UNAVAILABLE", "the forwarder's database is unavailable; retry later")


async def _broker_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("broker failure during %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "BROKER_UNAVAILABLE", f"the message broker is unavailable ({exc}); retry later")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error during %s %s", request.method, request.url.path)
    return error_response(500, "INTERNAL_ERROR", "an unexpected error occurred in the forwarder")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(BrokerError, _broker_error)
    app.add_exception_handler(Exception, _unexpected)
