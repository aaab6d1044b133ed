"""Uploading a large result from the worker to the forwarder's blob store (issue 15).

A task published with an upload grant (`Task.result_upload_grant`, see
`taskfabric.protocol.result_uploads`) whose serialized result is at least
`Task.result_upload_min_bytes` is sent by the worker itself to `PUT /v1/tasks/{id}/result-blob`;
the `Result` then carries only the `ResultBlob` the forwarder answered (name, size, sha256,
receipt), so the bytes never cross the manager, the agent or the broker.
"""

from __future__ import annotations

import httpx

from taskfabric.protocol import ResultBlob, Task
from taskfabric.protocol.result_uploads import RESULT_GRANT_HEADER, result_upload_path

__all__ = ["ResultUploadError", "ResultUploader", "should_upload", "upload_result"]


class ResultUploadError(Exception):
    """The upload failed; `too_large` when the forwarder refused the size (413)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def should_upload(task: Task, size: int) -> bool:
    """Whether a result of `size` bytes goes to the forwarder directly."""
    return bool(task.result_upload_grant and task.result_upload_url) and size >= task.result_upload_min_bytes


class ResultUploader:
    """Uploads results over one kept HTTP client (making an `httpx.Client` costs 20-40 ms: more
    than sending a MiB over it)."""

    def __init__(self, *, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._http: httpx.Client | None = None

    def upload(self, task: Task, data: bytes) -> ResultBlob:
        """Send `data` as `task`'s result; the forwarder's answer. Raises `ResultUploadError`."""
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout_s)
        return upload_result(task, data, http=self._http)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def upload_result(task: Task, data: bytes, *, http: httpx.Client) -> ResultBlob:
    """Send `data` as `task`'s result with `http`; the forwarder's answer. Raises `ResultUploadError`."""
    url = task.result_upload_url.rstrip("/") + result_upload_path(task.task_id)
    headers = {RESULT_GRANT_HEADER: task.result_upload_grant, "Content-Type": "application/octet-stream"}
    try:
        response = http.put(url, content=data, headers=headers)
    except httpx.HTTPError as exc:
        raise ResultUploadError(f"cannot upload the result to {task.result_upload_url}: {exc}") from None
    if response.status_code >= 400:
        raise ResultUploadError(_refusal(response), too_large=response.status_code == 413)
    try:
        answer = response.json()
        blob = ResultBlob(
            name=str(answer["name"]),
            size=int(answer["size"]),
            sha256=str(answer["sha256"]),
            receipt=str(answer["receipt"]),
        )
    except (ValueError, KeyError, TypeError):
        raise ResultUploadError("the forwarder's answer to the result upload is malformed") from None
    if blob.size != len(data):
        raise ResultUploadError(f"the forwarder stored {blob.size} bytes of a {len(data)}-byte result")
    return blob


def _refusal(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        detail = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        detail = f"HTTP {response.status_code}"
    return f"the forwarder refused the result upload: {detail}"
