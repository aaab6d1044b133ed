"""Large results uploaded by the worker: what crosses the wire instead of the bytes.

The forwarder gives each task it publishes a grant (`Task.result_upload_grant`, with its URL in
`Task.result_upload_url` and the size from which to use it in `Task.result_upload_min_bytes`). A
worker whose result is at least that large sends the bytes to
`PUT {url}/v1/tasks/{task_id}/result-blob` with the grant in the `X-Taskfabric-Result-Grant`
header; the forwarder streams them into its blob store and answers the blob's name, size and
sha256 with a receipt (its HMAC over the task id and those three). The worker's `Result` then
carries that `ResultBlob` instead of the value: only the reference rides the broker, and the
forwarder records the blob without copying it (the receipt proves it wrote that blob for that
task). The client downloads the bytes streamed and checks their sha256.

    grant   = base64url(claims) "." base64url(HMAC-SHA256(k, base64url(claims)))
    claims  = JSON {"t": task id (hex), "n": most bytes, "e": expires_at (epoch s)}
    receipt = base64url(HMAC-SHA256(k, "task id hex|name|size|sha256"))

`k` is derived from the forwarder's data reference key, so grants and receipts are not
interchangeable with data references. No user token ever reaches the endpoint.
"""

from __future__ import annotations

import uuid

__all__ = ["RESULT_GRANT_HEADER", "result_upload_path"]

RESULT_GRANT_HEADER = "X-Taskfabric-Result-Grant"


def result_upload_path(task_id: uuid.UUID) -> str:
    """The upload route of one task, relative to the forwarder's URL."""
    return f"/v1/tasks/{task_id}/result-blob"
