"""The client's HTTP edge: one `httpx.Client` to the forwarder, errors translated to taskfabric's.

A 4xx/5xx answer becomes the matching `ServiceError` subclass carrying the server's error code and
message (401 `AuthenticationError`, 403 `PermissionDenied`, 404 `NotFoundError`, 413
`PayloadTooLarge`, 400/422 `InvalidRequest`, 429 `QuotaExceeded` with the quota's name, value and
the `Retry-After` wait); a connection failure becomes `ServiceError` with
status 0 and says which URL could not be reached. Idempotent reads are retried on connection errors.

With several forwarder URLs (replicas), calls go to the current one; a connection that cannot be
made (refused, connect timeout: the request was never sent) moves to the next URL at once, for
any method. Any other transport failure (reset, read timeout: the request may have arrived) also
moves on, but the call fails with status 0 unless its own retry policy allows a retry: reads are
retried, a submission is retried by client/retry.py with the same `submission_id` (so a request
that did arrive makes no second tasks).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
import msgpack

from taskfabric import __version__
from taskfabric.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFoundError,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    ServiceError,
)

__all__ = ["ServiceHTTP"]

log = logging.getLogger(__name__)

_BY_STATUS: dict[int, type[ServiceError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    413: PayloadTooLarge,
    422: InvalidRequest,
}
#: when a 429 names no wait (or an unreadable one): retry after this long
_DEFAULT_RETRY_AFTER_S = 1.0
MSGPACK = "application/msgpack"
_CHUNK_BYTES = 1024 * 1024


class ServiceHTTP:
    """Calls to the forwarder at `url` (one URL, or several replicas: see the module's docstring)
    with bearer `token`."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        *,
        timeout_s: float = 60.0,
        read_retries: int = 3,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """`verify`: the context that checks the forwarder's certificate (default: the system's)."""
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("at least one forwarder URL is needed")
        self._read_retries = read_retries
        self._clients = [
            httpx.Client(
                base_url=one,
                headers={"Authorization": f"Bearer {token}", "User-Agent": f"taskfabric-client/{__version__}"},
                timeout=timeout_s,
                verify=verify if verify is not None else True,
            )
            for one in self.urls
        ]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The URL calls go to now."""
        return self.urls[self._current]

    @property
    def _http(self) -> httpx.Client:
        return self._clients[self._current]

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def _url_of(self, http: httpx.Client) -> str:
        return self.urls[self._clients.index(http)]

    def _fail_over(self, failed: httpx.Client, exc: BaseException) -> bool:
        """Move on from `failed` to the next URL (unless another thread did already); False when
        there is only one URL."""
        if len(self._clients) == 1:
            return False
        with self._lock:
            if self._clients[self._current] is failed:
                self._current = (self._current + 1) % len(self._clients)
                log.warning("forwarder %s failed (%s); now using %s", self._url_of(failed), exc, self.url)
        return True

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._json(self._send("GET", path, retries=self._read_retries, **kwargs))

    def get_bytes(self, path: str) -> tuple[bytearray, httpx.Headers]:
        """A binary body, read in chunks into one buffer (sized from Content-Length when given: no
        regrowth, and no final copy), and its headers."""
        http = self._http
        try:
            with http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                return _read_into_buffer(response), response.headers
        except httpx.HTTPError as exc:
            self._fail_over(http, exc)
            where = self._url_of(http)
            raise ServiceError(f"cannot read {path} from {where}: {exc}", status=0, code="UNREACHABLE") from None

    def post(self, path: str, body: Any, *, idempotent: bool = False) -> Any:
        return self._json(self._send("POST", path, json=body, retries=self._read_retries if idempotent else 0))

    def post_msgpack(self, path: str, body: Any) -> Any:
        payload = msgpack.packb(body, use_bin_type=True)
        response = self._send("POST", path, content=payload, headers={"Content-Type": MSGPACK, "Accept": MSGPACK})
        if response.headers.get("content-type", "").startswith(MSGPACK):
            return msgpack.unpackb(response.content, raw=False)
        return self._json(response)

    def delete(self, path: str) -> None:
        self._send("DELETE", path)

    def put(self, path: str, body: Any) -> Any:
        """PUT replaces a whole document: safe to retry."""
        return self._json(self._send("PUT", path, json=body, retries=self._read_retries))

    def put_bytes(self, path: str, data: bytes) -> Any:
        """PUT a binary body (an upload named by its digest: safe to retry)."""
        headers = {"Content-Type": "application/octet-stream"}
        return self._json(self._send("PUT", path, content=data, headers=headers, retries=self._read_retries))

    # --- internals ----------------------------------------------------------------------

    def _send(self, method: str, path: str, *, retries: int = 0, **kwargs: Any) -> httpx.Response:
        attempt = 0
        unsent = 0  # connections refused in a row: each URL is tried once before giving up
        while True:
            http = self._http
            try:
                response = http.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never sent: any method may go on
                if unsent < len(self._clients) - 1 and self._fail_over(http, exc):
                    unsent += 1
                    continue
                failure: httpx.HTTPError = exc
            except httpx.HTTPError as exc:  # may have arrived: only the caller's retry policy may resend
                self._fail_over(http, exc)
                failure = exc
            if attempt >= retries:
                raise ServiceError(
                    f"cannot reach the forwarder at {self._url_of(http)}: {failure}", status=0, code="UNREACHABLE"
                ) from None
            attempt += 1
            unsent = 0
            time.sleep(min(2.0, 0.1 * 2**attempt))
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


def _error_from(response: httpx.Response) -> ServiceError:
    code, message = "HTTP_ERROR", response.text[:500] or response.reason_phrase
    error: Any = None
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
        elif isinstance(body, dict) and "detail" in body:
            message = str(body["detail"])
    except ValueError:
        pass
    text = f"{message} (HTTP {response.status_code} {code})"
    if response.status_code == 429:
        return _quota_exceeded(response, text, code, error if isinstance(error, dict) else {})
    kind = _BY_STATUS.get(response.status_code, ServiceError)
    return kind(text, status=response.status_code, code=code)


def _quota_exceeded(response: httpx.Response, text: str, code: str, error: dict[str, Any]) -> QuotaExceeded:
    limit = error.get("limit")
    return QuotaExceeded(
        text,
        code=code,
        quota=str(error.get("quota") or ""),
        limit=float(limit) if isinstance(limit, int | float) else None,
        retry_after_s=_retry_after_s(response.headers.get("Retry-After")),
    )


def _retry_after_s(value: str | None) -> float:
    """`Retry-After` in seconds (the forwarder sends whole seconds; an HTTP date or garbage from a
    proxy falls back to a short default)."""
    try:
        return max(0.0, float(value)) if value is not None else _DEFAULT_RETRY_AFTER_S
    except ValueError:
        return _DEFAULT_RETRY_AFTER_S


def _read_into_buffer(response: httpx.Response) -> bytearray:
    try:
        expected = int(response.headers.get("content-length", ""))
    except ValueError:
        expected = -1
    if expected < 0:
        buffer = bytearray()
        for chunk in response.iter_bytes(_CHUNK_BYTES):
            buffer += chunk
        return buffer
    buffer = bytearray(expected)
    view = memoryview(buffer)
    filled = 0
    for chunk in response.iter_bytes(_CHUNK_BYTES):
        if filled + len(chunk) > expected:  # more than announced: fall back to growing
            tail = bytearray(view[:filled])
            view.release()
            return tail + chunk + b"".join(response.iter_bytes(_CHUNK_BYTES))
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    view.release()
    if filled < expected:
        del buffer[filled:]
    return buffer
