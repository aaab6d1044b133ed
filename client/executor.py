"""`Executor`: a `concurrent.futures.Executor` whose tasks run on a taskfabric endpoint.

    with Executor(endpoint_id) as ex:
        future = ex.submit(square, 7)      # future.task_id is set once the service accepted it
        print(future.result())

State (named, in this object): the queue of submitted calls not yet sent, and the table of futures
awaiting results. Two threads: the *submitter* sends queued calls in batches (one request carries
whatever accumulated while the previous one was in flight, up to `batch_size`), and the results
stream pushes outcomes back. `attach(task_ids)` re-attaches to tasks submitted earlier (e.g. by a
process that has since died). `options(walltime_s=..., resource_specification=...)` is a view of
the executor with other per-task defaults, sharing its client, queue, threads and futures.

A task's captured stdout and stderr come with its result on the stream (so `TaskFuture.stdout`
needs no extra request), set on the future before it resolves.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from taskfabric.client.client import Client, _Call, checked_resource_specification
from taskfabric.client.serialization import exception_from_error, serialize_arguments, value_from_result
from taskfabric.client.stream import ResultStream
from taskfabric.errors import NotFoundError, PayloadTooLarge, TaskfabricError
from taskfabric.logs import wrap_with_logs

__all__ = ["Executor", "ExecutorOptions", "TaskFuture"]

log = logging.getLogger(__name__)


class TaskFuture(concurrent.futures.Future[Any]):
    """A future for one task; `task_id` is set once the service has accepted the task, `stdout`
    and `stderr` (the end of the task's captured output) once it is done (None before, and for a
    future re-attached to a task the service no longer knows)."""

    def __init__(self) -> None:
        super().__init__()
        self.task_id: uuid.UUID | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None


@dataclasses.dataclass(slots=True)
class _Queued:
    future: TaskFuture
    call: _Call


_STOP = object()


class Executor(concurrent.futures.Executor):
    """Runs calls on endpoint `endpoint_id` through `client` (a new `Client()` if not given).

    Calls are sent in batches of up to `batch_size` tasks and `batch_bytes` of payload: whatever
    accumulated while the previous request was in flight (so a lone call goes out at once)."""

    def __init__(
        self,
        endpoint_id: uuid.UUID | str,
        client: Client | None = None,
        *,
        batch_size: int = 10_000,
        batch_bytes: int = 16 * 1024 * 1024,
        walltime_s: float | None = None,
        resource_specification: dict[str, int] | None = None,
    ) -> None:
        self.endpoint_id = uuid.UUID(str(endpoint_id))
        self.resource_specification = checked_resource_specification(resource_specification)
        self._owns_client = client is None
        self.client = client or Client()
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.walltime_s = walltime_s
        self._functions: dict[int, tuple[weakref.ref[Any] | Callable[..., Any], uuid.UUID]] = {}
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: dict[uuid.UUID, TaskFuture] = {}
        self._lock = threading.Lock()
        self._shutdown = False
        self._fatal: BaseException | None = None
        self._stream = ResultStream(
            self.client.config.url, self.client.config.token, self._on_results, on_fatal=self._on_fatal
        )
        self._stream.start()
        self._submitter = threading.Thread(target=self._submit_loop, name="task-submitter", daemon=True)
        self._submitter.start()

    # --- the concurrent.futures API -----------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `fn(*args, **kwargs)` on the endpoint; `fn` is registered once per Executor."""
        return self.submit_to_registered_function(self.register_function(fn), args, kwargs)

    def submit_to_registered_function(
        self, function_id: uuid.UUID | str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> TaskFuture:
        return self._enqueue(function_id, args, kwargs, self.walltime_s, self.resource_specification)

    def options(
        self, *, walltime_s: float | None = None, resource_specification: dict[str, int] | None = None
    ) -> ExecutorOptions:
        """A view of this executor whose tasks get other defaults (None: keep this executor's):

            ex.options(walltime_s=2).submit(fn, x)    # fn's own keyword arguments stay its own

        It shares this executor's client, queue, threads and results; shut down the executor, not
        the view. Raises `InvalidRequest` for a bad resource specification, `ValueError` for a
        walltime that is not positive."""
        return ExecutorOptions(self, walltime_s=walltime_s, resource_specification=resource_specification)

    def _enqueue(
        self,
        function_id: uuid.UUID | str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        walltime_s: float | None,
        resource_specification: dict[str, int] | None,
    ) -> TaskFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            if self._fatal is not None:
                raise self._fatal
        future = TaskFuture()
        payload = serialize_arguments(args, kwargs or {})
        call = _Call(uuid.UUID(str(function_id)), payload, walltime_s, resource_specification)
        self._queue.put(_Queued(future, call))
        return future

    def register_function(self, fn: Callable[..., Any], **kwargs: Any) -> uuid.UUID:
        """The function's id, registering it with the service on first use."""
        key = id(fn)
        known = self._functions.get(key)
        if known is not None:
            ref, function_id = known
            if (ref() if isinstance(ref, weakref.ref) else ref) is fn:
                return function_id
        function_id = self.client.register_function(fn, **kwargs)
        try:
            ref_or_fn: weakref.ref[Any] | Callable[..., Any] = weakref.ref(fn)
        except TypeError:  # builtins and some callables take no weak references
            ref_or_fn = fn
        self._functions[key] = (ref_or_fn, function_id)
        return function_id

    def attach(self, task_ids: Iterable[uuid.UUID | str]) -> list[TaskFuture]:
        """Futures for tasks submitted earlier (by this or another process); they resolve from
        the results stream like any other."""
        futures = []
        ids = []
        with self._lock:
            for task_id in task_ids:
                future = TaskFuture()
                future.task_id = uuid.UUID(str(task_id))
                future.set_running_or_notify_cancel()
                self._waiting[future.task_id] = future
                futures.append(future)
                ids.append(future.task_id)
        self._stream.subscribe(ids)
        return futures

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            self._cancel_queued()
        self._queue.put(_STOP)
        if wait:
            self._submitter.join()
            concurrent.futures.wait(list(self._waiting.values()))
        self._stream.close()
        if self._owns_client:
            self.client.close()

    # --- submitting ---------------------------------------------------------------------

    @wrap_with_logs
    def _submit_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            size = len(first.call.payload)
            stop = False
            while len(batch) < self.batch_size and size < self.batch_bytes:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                size += len(item.call.payload)
            self._send(batch)
            if stop:
                return

    def _send(self, batch: list[_Queued]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if live:
            self._submit(live)

    def _submit(self, live: list[_Queued]) -> None:
        """One request; a batch the service finds too large is split and sent in halves."""
        try:
            task_ids = self.client.submit_calls(self.endpoint_id, [item.call for item in live])
        except PayloadTooLarge as exc:
            if len(live) > 1 and ("max_batch_tasks" in str(exc) or "max_request_bytes" in str(exc)):
                half = len(live) // 2
                self._submit(live[:half])
                self._submit(live[half:])
                return
            for item in live:
                item.future.set_exception(exc)
            return
        except (TaskfabricError, ValueError) as exc:
            for item in live:
                item.future.set_exception(exc)
            return
        with self._lock:
            for item, task_id in zip(live, task_ids, strict=True):
                item.future.task_id = task_id
                self._waiting[task_id] = item.future
        self._stream.subscribe(task_ids)

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.future.cancel()

    # --- results ------------------------------------------------------------------------

    def _on_results(self, results: list[dict[str, Any]]) -> None:
        for result in results:
            task_id: uuid.UUID = result["task_id"]  # the stream made it a UUID
            with self._lock:
                future = self._waiting.pop(task_id, None)
            if future is None or future.done():
                continue
            if result.get("unknown"):
                future.set_exception(
                    NotFoundError(f"task {task_id} is unknown to the service (or not yours)", status=404)
                )
                continue
            future.stdout = result.get("stdout") or ""
            future.stderr = result.get("stderr") or ""
            try:
                future.set_result(_value(result, task_id))
            except BaseException as exc:
                future.set_exception(exc)

    def _on_fatal(self, error: BaseException) -> None:
        with self._lock:
            self._fatal = error
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    # --- context manager ----------------------------------------------------------------

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


class ExecutorOptions(concurrent.futures.Executor):
    """`Executor.options(...)`: submits through its executor with other per-task defaults."""

    def __init__(
        self,
        executor: Executor,
        *,
        walltime_s: float | None = None,
        resource_specification: dict[str, int] | None = None,
    ) -> None:
        if walltime_s is not None and not walltime_s > 0:
            raise ValueError(f"walltime_s must be a positive number of seconds, got {walltime_s!r}")
        self.executor = executor
        self.walltime_s = walltime_s if walltime_s is not None else executor.walltime_s
        checked = checked_resource_specification(resource_specification)
        self.resource_specification = checked if checked is not None else executor.resource_specification

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """As `Executor.submit`, with this view's walltime and resource specification."""
        return self.submit_to_registered_function(self.executor.register_function(fn), args, kwargs)

    def submit_to_registered_function(
        self, function_id: uuid.UUID | str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> TaskFuture:
        return self.executor._enqueue(function_id, args, kwargs, self.walltime_s, self.resource_specification)

    def options(
        self, *, walltime_s: float | None = None, resource_specification: dict[str, int] | None = None
    ) -> ExecutorOptions:
        """A view with these defaults changed too."""
        return ExecutorOptions(
            self.executor,
            walltime_s=walltime_s if walltime_s is not None else self.walltime_s,
            resource_specification=(
                resource_specification if resource_specification is not None else self.resource_specification
            ),
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Does nothing: the view owns nothing (shut down its executor)."""


def _value(result: dict[str, Any], task_id: uuid.UUID) -> Any:
    details = result.get("details") or {}
    worker_python = str(details.get("worker_python") or "")
    if result.get("ok"):
        return value_from_result(result["value"], worker_python=worker_python, task_id=task_id)
    raise exception_from_error(dict(result.get("error") or {}), worker_python=worker_python, task_id=task_id)
