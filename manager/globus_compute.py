"""Globus-Compute-format tasks in a worker: decoding and encoding with the SDK's own
`ComputeSerializer` (the optional extra `taskfabric[globus-compute]`).

A function registered through the Globus-Compute-compatible API has a body marked with
`GLOBUS_COMPUTE_BODY_PREFIX` followed by the SDK's packed function buffer; its tasks' payloads are
the SDK's packed `(args, kwargs)` buffers. Joined, they are exactly the task buffer a Globus Compute
worker unpacks. The return value goes back serialized by the same serializer, as the text the SDK
deserializes. Like `execution`, this runs only in worker processes: it is where such payloads are
deserialized.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from taskfabric.protocol.globus_compute import GLOBUS_COMPUTE_BODY_PREFIX, is_compute_body

__all__ = ["EXTRA", "ComputeCodec", "GlobusComputeUnavailable", "is_compute_body"]

#: what to install for these tasks
EXTRA = "taskfabric[globus-compute] (the globus-compute-sdk package)"


class GlobusComputeUnavailable(Exception):
    """The worker's Python lacks globus-compute-sdk."""


class ComputeCodec:
    """The SDK's serializer, loaded on first use."""

    def __init__(self) -> None:
        self._serializer: Any = None

    def _load(self) -> Any:
        if self._serializer is None:
            try:
                module = importlib.import_module("globus_compute_sdk.serialize")
            except ImportError as exc:
                raise GlobusComputeUnavailable(
                    f"this task was submitted with the Globus Compute SDK, and this worker cannot decode it: "
                    f"install {EXTRA} where the endpoint's workers run ({exc})"
                ) from None
            self._serializer = module.ComputeSerializer()
        return self._serializer

    def load_call(self, body: bytes, payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """(function, args, kwargs) of a task; raises `GlobusComputeUnavailable`, or whatever the
        SDK's deserializer raises for a bad buffer."""
        serializer = self._load()
        buffer = body.removeprefix(GLOBUS_COMPUTE_BODY_PREFIX).decode() + payload.decode()
        function, args, kwargs = serializer.unpack_and_deserialize(buffer)
        if not callable(function):
            raise TypeError(f"the function deserialized to a {type(function).__name__}, not a callable")
        return function, tuple(args), dict(kwargs)

    def dump_value(self, value: Any) -> bytes:
        """The return value as the SDK's serialized text (UTF-8)."""
        text: str = self._load().serialize(value)
        return text.encode()
