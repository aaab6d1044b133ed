"""Grouping submitted tasks into few broker messages, and the cache of function bodies they carry.

A submit request of N tasks becomes ceil-ish(N / publish_batch_tasks) `TaskBatch` messages, in
request order; a message also stops growing once its payloads and function bodies reach
`publish_batch_bytes` (a single task larger than that still travels, alone). Each message carries
the body of every function its tasks call, once: an agent needs nothing but the message.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence

from taskfabric.forwarder.records import NewTask
from taskfabric.forwarder.result_uploads import UploadOffer
from taskfabric.protocol import FunctionBody, Task, TaskBatch

__all__ = ["FunctionBodyCache", "plan_task_batches"]

#: bytes a task adds to a message besides its payload (ids, keys, msgpack framing)
TASK_OVERHEAD_BYTES = 64


def plan_task_batches(
    tasks: Sequence[NewTask],
    bodies: Mapping[uuid.UUID, FunctionBody],
    *,
    max_tasks: int,
    max_bytes: int,
    client_python: str = "",
    submitted_at: float | None = None,
    task_group_id: uuid.UUID | None = None,
    user: str = "",
    offer: UploadOffer | None = None,
) -> list[TaskBatch]:
    """Split `tasks` (in order) into messages of at most `max_tasks` tasks and about `max_bytes`;
    each task names the submitting `user` (a username: the worker shows it as TASKFABRIC_TASK_USER)
    and, with an `offer`, carries its own grant to upload a large result (`result_uploads.py`)."""
    signed_at = submitted_at if submitted_at is not None else time.time()
    batches: list[TaskBatch] = []
    current: list[Task] = []
    functions: dict[uuid.UUID, FunctionBody] = {}
    size = 0
    for new in tasks:
        body = bodies[new.function_id]
        added = len(new.payload) + TASK_OVERHEAD_BYTES
        if new.function_id not in functions:
            added += len(body.body)
        if current and (len(current) >= max_tasks or size + added > max_bytes):
            batches.append(TaskBatch(tasks=current, functions=list(functions.values()), client_python=client_python))
            current, functions, size = [], {}, 0
            added = len(new.payload) + TASK_OVERHEAD_BYTES + len(body.body)
        current.append(
            Task(
                task_id=new.task_id,
                function_id=new.function_id,
                payload=new.payload,
                walltime_s=new.walltime_s,
                submitted_at=submitted_at,
                task_group_id=task_group_id,
                resource_specification=new.resource_specification or {},
                user=user,
                result_upload_url=offer.url if offer is not None else "",
                result_upload_grant=offer.grant_for(new.task_id, signed_at) if offer is not None else "",
                result_upload_min_bytes=offer.threshold_bytes + 1 if offer is not None else 0,
            )
        )
        functions.setdefault(new.function_id, body)
        size += added
    if current:
        batches.append(TaskBatch(tasks=current, functions=list(functions.values()), client_python=client_python))
    return batches


class FunctionBodyCache:
    """Function bodies by id, least recently used evicted first, bounded by total bytes.

    Bodies never change for an id (a new body is a new function), so a cached body is never stale;
    a deleted function's body simply ages out."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bodies: collections.OrderedDict[uuid.UUID, FunctionBody] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._size

    def get_many(self, function_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, FunctionBody]:
        """The cached bodies among `function_ids`."""
        found: dict[uuid.UUID, FunctionBody] = {}
        with self._lock:
            for function_id in function_ids:
                body = self._bodies.get(function_id)
                if body is not None:
                    self._bodies.move_to_end(function_id)
                    found[function_id] = body
        return found

    def put(self, body: FunctionBody) -> None:
        """Cache a body (unless it alone is larger than the cache)."""
        size = len(body.body)
        if size > self._max_bytes:
            return
        with self._lock:
            previous = self._bodies.pop(body.function_id, None)
            if previous is not None:
                self._size -= len(previous.body)
            self._bodies[body.function_id] = body
            self._size += size
            while self._size > self._max_bytes:
                _, evicted = self._bodies.popitem(last=False)
                self._size -= len(evicted.body)

    def discard(self, function_id: uuid.UUID) -> None:
        with self._lock:
            previous = self._bodies.pop(function_id, None)
            if previous is not None:
                self._size -= len(previous.body)

    def __contains__(self, function_id: object) -> bool:
        return function_id in self._bodies

    def __len__(self) -> int:
        return len(self._bodies)
