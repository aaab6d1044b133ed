"""Fetching arguments passed by reference (`taskfabric.protocol.data_refs.DataRef`) on the worker.

The worker downloads the bytes from the forwarder with the reference's signed token (no user token
reaches the endpoint), checks size and sha256 as they arrive, and keeps the last download (by
token) so a batch of tasks sharing one reference fetches it once per worker.
"""

from __future__ import annotations

import hashlib

import httpx

from taskfabric.errors import ErrorCode
from taskfabric.protocol.data_refs import DATA_REF_HEADER, DataRef

__all__ = ["DataFetchError", "DataFetcher"]

_CHUNK_BYTES = 1024 * 1024


class DataFetchError(Exception):
    """A reference could not be resolved: `code` is DATA_INTEGRITY or DATA_UNAVAILABLE."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DataFetcher:
    """Downloads and checks referenced arguments (one cached: the last one)."""

    def __init__(self, *, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._last: tuple[str, bytes | bytearray] | None = None  # (token, checked bytes)
        self._http: httpx.Client | None = None

    def fetch(self, ref: DataRef) -> bytes | bytearray:
        """The referenced bytes, checked. Raises `DataFetchError`."""
        # keyed by the token too: a worker may run tasks of several users (a shared endpoint), and
        # a digest alone must not stand in for a reference the forwarder has not accepted
        if self._last is not None and self._last[0] == ref.token:
            return self._last[1]
        data = self._download(ref)
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise DataFetchError(
                ErrorCode.DATA_INTEGRITY,
                f"the argument passed by reference ({ref.sha256}) does not match its recorded size ({ref.size}) "
                f"and sha256: {len(data)} bytes downloaded",
            )
        self._last = (ref.token, data)
        return data

    def _download(self, ref: DataRef) -> bytearray:
        url = f"{ref.url.rstrip('/')}/v1/data/{ref.sha256}"
        buffer = bytearray()
        try:
            if self._http is None:  # kept: making a client costs more than a small download
                self._http = httpx.Client(timeout=self.timeout_s)
            with self._http.stream("GET", url, headers={DATA_REF_HEADER: ref.token}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise DataFetchError(ErrorCode.DATA_UNAVAILABLE, _refusal(ref, response))
                for chunk in response.iter_bytes(_CHUNK_BYTES):
                    buffer += chunk
                    if len(buffer) > ref.size:  # more than signed for: stop reading, fail the check
                        break
        except httpx.HTTPError as exc:
            raise DataFetchError(
                ErrorCode.DATA_UNAVAILABLE, f"cannot download the argument {ref.sha256} from {ref.url}: {exc}"
            ) from None
        return buffer  # not copied: a 200 MB argument is held once


def _refusal(ref: DataRef, response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        detail = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        detail = f"HTTP {response.status_code}"
    return f"the forwarder refused the argument passed by reference ({ref.sha256}): {detail}"
