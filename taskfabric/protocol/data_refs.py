"""Large arguments by reference: what a task carries instead of the bytes.

The client uploads a large argument once (`PUT /v1/data/{sha256}`, the bytes of the pickled and
possibly compressed object, see `payloads.py`) and puts a `DataRef` in the task's arguments in its
place. The worker fetches it (`GET /v1/data/{sha256}`, the reference's `token` in the
`X-Taskfabric-Data-Ref` header: no user token travels to the endpoint), checks the size and sha256,
and passes the unpickled object to the function.

`token` is the forwarder's HMAC-signed claim "user U may read blob sha256 of size N until T"
(`forwarder/data_refs.py`): the worker needs nothing else, another user's blob cannot be named with
it, and it stops working at `expires_at`.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DATA_REF_HEADER", "DataRef"]

DATA_REF_HEADER = "X-Taskfabric-Data-Ref"


@dataclasses.dataclass(frozen=True, slots=True)
class DataRef:
    """An uploaded argument: the forwarder's `url`, the blob's `sha256` (hex) and `size` (bytes),
    the signed read `token` and when it expires (`expires_at`, epoch seconds)."""

    url: str
    sha256: str
    size: int
    token: str
    expires_at: float
