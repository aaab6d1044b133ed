"""`Executor`: a `concurrent.futures.Executor` whose tasks run on a taskfabric endpoint.

    with Executor(endpoint_id) as ex:
        future = ex.submit(square, 7)      # future.task_id is set once the service accepted it
        print(future.result())

State (named, in this object): the queue of submitted calls not yet sent, and the table of futures
awaiting results. Two threads: the *submitter* sends queued calls in batches (one request carries
whatever accumulated while the previous one was in flight, up to `batch_size`), and the results
stream pushes outcomes back. `attach(task_ids)` re-attaches to tasks submitted earlier (e.g. by a
process that has since died); every task joins the Executor's task group, so a new process can
re-attach to all of them with `Executor(endpoint_id, task_group_id=gid).reload_tasks()`.
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

from taskfabric.client.client import Client, _Call
from taskfabric.client.serialization import exception_from_error, serialize_arguments, value_from_result
from taskfabric.client.stream import ResultStream
from taskfabric.errors import NotFoundError, PayloadTooLarge, TaskfabricError
from taskfabric.logs import wrap_with_logs

__all__ = ["Executor", "TaskFuture"]

log = logging.getLogger(__name__)


class TaskFuture(concurrent.futures.Future[Any]):
    """A future for one task; `task_id` is set once the service has accepted the task."""

    def __init__(self) -> None:
        super().__init__()
        self.task_id: uuid.UUID | None = None


@dataclasses.dataclass(slots=True)
class _Queued:
    future: TaskFuture
    call: _Call


_STOP = object()


class Executor(concurrent.futures.Executor):
    """Runs calls on endpoint `endpoint_id` through `client` (a new `Client()` if not given).

    Calls are sent in batches of up to `batch_size` tasks and `batch_bytes` of payload: whatever
    accumulated while the previous request was in flight (so a lone call goes out at once).
    Every task joins the task group `task_group_id`: a new random id unless given; give an earlier
    Executor's id to add to its group and `reload_tasks()` to collect its tasks."""

    def __init__(
        self,
        endpoint_id: uuid.UUID | str,
        client: Client | None = None,
        *,
        batch_size: int = 10_000,
        batch_bytes: int = 16 * 1024 * 1024,
        walltime_s: float | None = None,
        task_group_id: uuid.UUID | str | None = None,
    ) -> None:
        self.endpoint_id = uuid.UUID(str(endpoint_id))
        self.task_group_id = uuid.UUID(str(task_group_id)) if task_group_id is not None else uuid.uuid4()
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
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            if self._fatal is not None:
                raise self._fatal
        future = TaskFuture()
        call = _Call(uuid.UUID(str(function_id)), serialize_arguments(args, kwargs or {}), self.walltime_s)
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

    def reload_tasks(self, task_group_id: uuid.UUID | str | None = None) -> list[TaskFuture]:
        """Futures for every task of the task group (this Executor's unless another is given),
        oldest first, e.g. from a new process after the one that submitted them died. Finished
        tasks come back resolved at once (their outcomes fetched in one request), pending ones
        resolve through the results stream; a task this Executor already awaits keeps its future."""
        group = uuid.UUID(str(task_group_id)) if task_group_id is not None else self.task_group_id
        ids = [uuid.UUID(task["task_id"]) for task in self.client.get_task_group(group)]
        with self._lock:
            known = {task_id: self._waiting[task_id] for task_id in ids if task_id in self._waiting}
        # Read after `known`: a result this Executor's stream delivered is stored before it is sent,
        # so a task found pending here was never delivered on this stream, and may be subscribed to.
        others = [task_id for task_id in ids if task_id not in known]
        outcomes = self.client.get_batch_result(others) if others else {}
        finished = {
            task_id: _finished_future(task_id, found) for task_id, found in outcomes.items() if not found["pending"]
        }
        attached = iter(self.attach([task_id for task_id in others if task_id not in finished]))
        futures = []
        for task_id in ids:
            future = known.get(task_id) or finished.get(task_id)
            futures.append(future if future is not None else next(attached))
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
            calls = [item.call for item in live]
            task_ids = self.client.submit_calls(self.endpoint_id, calls, task_group_id=self.task_group_id)
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


def _finished_future(task_id: uuid.UUID, outcome: dict[str, Any]) -> TaskFuture:
    """A resolved future from an outcome of `Client.get_batch_result`."""
    future = TaskFuture()
    future.task_id = task_id
    future.set_running_or_notify_cancel()
    if "exception" in outcome:
        future.set_exception(outcome["exception"])
    else:
        future.set_result(outcome.get("result"))
    return future


def _value(result: dict[str, Any], task_id: uuid.UUID) -> Any:
    details = result.get("details") or {}
    worker_python = str(details.get("worker_python") or "")
    if result.get("ok"):
        return value_from_result(result["value"], worker_python=worker_python, task_id=task_id)
    raise exception_from_error(dict(result.get("error") or {}), worker_python=worker_python, task_id=task_id)
