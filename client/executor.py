"""`Executor`: a `concurrent.futures.Executor` whose tasks run on a taskfabric endpoint.

    with Executor(endpoint_id) as ex:     # or the name of one of your endpoints
        future = ex.submit(square, 7)      # future.task_id is set once the service accepted it
        print(future.result())

State (named, in this object): the queue of submitted calls not yet sent, the table of futures
awaiting results, and the functions seen so far (serialized at submit, deduplicated by content
hash, each registered once). Two threads: the *submitter* registers the functions a batch needs
and sends queued calls in batches (one request carries whatever accumulated while the previous one
was in flight, up to `batch_size`), and the results stream pushes outcomes back. A function id the
service no longer knows (the function was deleted) is registered again and the batch resubmitted
once. `attach(task_ids)` re-attaches to tasks submitted earlier (e.g. by a process that has since
died); every task joins the Executor's task group, so a new process can re-attach to all of them
with `Executor(endpoint_id, task_group_id=gid).reload_tasks()`. `options(walltime_s=...,
resource_specification=...)` is a view of the executor with other per-task defaults, sharing its
client, queue, threads and futures.

A task's captured stdout and stderr come with its result on the stream (so `TaskFuture.stdout`
needs no extra request), set on the future before it resolves.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import queue
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from taskfabric.client.client import Client, _Call, checked_resource_specification, function_name
from taskfabric.client.serialization import (
    buffer_bytes,
    content_hash,
    exception_from_error,
    serialize_arguments,
    serialize_function,
    value_from_result,
)
from taskfabric.client.stream import ResultStream
from taskfabric.errors import (
    InvalidRequest,
    NotFoundError,
    PayloadTooLarge,
    ServiceError,
    TaskCancelled,
    TaskfabricError,
)
from taskfabric.logs import wrap_with_logs
from taskfabric.malloc_tuning import tune_malloc
from taskfabric.protocol import ResultFrame, render
from taskfabric.protocol.task_ids import submission_task_ids

__all__ = ["DEFAULT_BY_REFERENCE_BYTES", "Executor", "ExecutorOptions", "TaskFuture"]

log = logging.getLogger(__name__)


class TaskFuture(concurrent.futures.Future[Any]):
    """A future for one task; `task_id` is set once the service has accepted the task, `stdout`
    and `stderr` (the end of the task's captured output) once it is done (None before, and for a
    future re-attached to a task the service no longer knows).

    `cancel()` keeps the standard meaning: it succeeds only while the call has not been sent to
    the service yet. `cancel_remote()` asks the service to cancel the task wherever it is."""

    def __init__(self, executor: Executor | None = None) -> None:
        super().__init__()
        self.task_id: uuid.UUID | None = None
        self.stdout: str | None = None
        self.stderr: str | None = None
        self._executor = executor

    def cancel_remote(self) -> bool:
        """Cancel the task on the service: True if it was cancelled (then `result()` raises
        `TaskCancelled`), False if it had already finished. A call not sent yet is simply
        cancelled here (`cancel()`)."""
        if self.task_id is None or self._executor is None:
            return self.cancel()
        return self._executor._cancel_remote(self)


@dataclasses.dataclass(slots=True, eq=False)
class _Function:
    """A serialized function; registered at most once per Executor (`function_id` None until then,
    and again after the service answered that it no longer knows the id)."""

    name: str
    body: bytes
    function_id: uuid.UUID | None = None


@dataclasses.dataclass(slots=True)
class _Queued:
    future: TaskFuture
    call: _Call
    #: the function to register before sending (None: `call.function_id` is already known)
    function: _Function | None = None


_STOP = object()
#: the caller's user id was not asked for yet
_UNASKED = object()
#: the most function-body bytes an Executor remembers beyond the functions still in use
_BODY_CACHE_BYTES = 64 * 1024 * 1024
#: `Executor(by_reference_bytes="auto")`: arguments of at least this size go by reference
DEFAULT_BY_REFERENCE_BYTES = 1024 * 1024
#: uploaded results downloaded at once by one Executor
_DOWNLOAD_THREADS = 4
#: the function id of a queued call whose function the submitter has not registered yet
_UNREGISTERED = uuid.UUID(int=0)
#: the service's limits a batch can exceed as a whole (a 413 naming one: send the batch in halves)
_BATCH_LIMITS = ("max_batch_tasks", "max_request_bytes", "limits.submit_body_bytes")


class Executor(concurrent.futures.Executor):
    """Runs calls on endpoint `endpoint_id` through `client` (a new `Client()` if not given).

    Calls are sent in batches of up to `batch_size` tasks and `batch_bytes` of payload: whatever
    accumulated while the previous request was in flight (so a lone call goes out at once).
    Every task joins the task group `task_group_id`: a new random id unless given; give an earlier
    Executor's id to add to its group and `reload_tasks()` to collect its tasks.

    Each top-level argument of at least `by_reference_bytes` (`bytes`, `bytearray`, `memoryview`,
    or an object whose type has `nbytes`, such as a numpy array) is uploaded once in `submit`
    (`Client.put_data`) and passed by reference: the broker, the endpoint agent and the manager
    carry only the reference. The default, `"auto"`, does so from `DEFAULT_BY_REFERENCE_BYTES`
    while the service can hand such data to endpoints (a blob store and its URL for endpoints
    configured); otherwise arguments travel inside their tasks, as they do with `None`."""

    def __init__(
        self,
        endpoint_id: uuid.UUID | str,
        client: Client | None = None,
        *,
        batch_size: int = 10_000,
        batch_bytes: int = 16 * 1024 * 1024,
        walltime_s: float | None = None,
        task_group_id: uuid.UUID | str | None = None,
        resource_specification: dict[str, int] | None = None,
        user_endpoint_config: dict[str, Any] | None = None,
        by_reference_bytes: int | Literal["auto"] | None = "auto",
    ) -> None:
        if by_reference_bytes == "auto":
            #: "auto": by reference from the default size, until the service turns out unable to
            self.by_reference_auto = True
            by_reference_bytes = DEFAULT_BY_REFERENCE_BYTES
        elif by_reference_bytes is not None and (not isinstance(by_reference_bytes, int) or by_reference_bytes < 1):
            raise ValueError(
                f"by_reference_bytes must be a positive number of bytes, 'auto' or None, got {by_reference_bytes!r}"
            )
        else:
            self.by_reference_auto = False
        self.by_reference_bytes: int | None = by_reference_bytes
        tune_malloc()  # payload buffers without page faults (taskfabric.malloc_tuning)
        #: for a multi-user endpoint: the variables of its user config template (each different
        #: value runs in its own user endpoint process; see docs/endpoint-owner.md)
        self.user_endpoint_config = dict(user_endpoint_config) if user_endpoint_config is not None else None
        self.task_group_id = uuid.UUID(str(task_group_id)) if task_group_id is not None else uuid.uuid4()
        self.resource_specification = checked_resource_specification(resource_specification)
        self._owns_client = client is None
        self.client = client or Client()
        try:
            self.endpoint_id = resolve_endpoint(self.client, endpoint_id)
        except BaseException:
            if self._owns_client:
                self.client.close()
            raise
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.walltime_s = walltime_s
        self._functions: dict[int, tuple[weakref.ref[Any] | Callable[..., Any], _Function]] = {}
        # by content hash, least recently used first: identical bodies register once; bodies
        # beyond _BODY_CACHE_BYTES are forgotten (they live on while a function object or a
        # queued call still refers to them)
        self._bodies: dict[str, _Function] = {}
        self._bodies_bytes = 0
        self._register_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: dict[uuid.UUID, TaskFuture] = {}
        self._owner: uuid.UUID | object | None = _UNASKED
        self._lock = threading.Lock()
        self._shutdown = False
        self._fatal: BaseException | None = None
        self._stream = ResultStream(
            self.client.config.urls,
            self.client.config.token,
            self._on_results,
            on_unknown=self._on_unknown,
            on_fatal=self._on_fatal,
            ssl_context=self.client.ssl_context,
        )
        # results the workers uploaded arrive as references: downloaded (streamed, sha256 checked)
        # off the stream's thread, a few at a time
        self._downloads = concurrent.futures.ThreadPoolExecutor(
            max_workers=_DOWNLOAD_THREADS, thread_name_prefix="result-download"
        )
        self._stream.start()
        self._submitter = threading.Thread(target=self._submit_loop, name="task-submitter", daemon=True)
        self._submitter.start()

    # --- the concurrent.futures API -----------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run `fn(*args, **kwargs)` on the endpoint. `fn` is serialized here; the background
        submitter registers it (once per distinct body) before sending, so a submit never waits
        for the service. A registration failure fails the future."""
        return self._submit_function(fn, args, kwargs, self.walltime_s, self.resource_specification)

    def submit_to_registered_function(
        self, function_id: uuid.UUID | str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> TaskFuture:
        return self._enqueue(
            uuid.UUID(str(function_id)), args, kwargs or {}, None, self.walltime_s, self.resource_specification
        )

    def options(
        self, *, walltime_s: float | None = None, resource_specification: dict[str, int] | None = None
    ) -> ExecutorOptions:
        """A view of this executor whose tasks get other defaults (None: keep this executor's):

            ex.options(walltime_s=2).submit(fn, x)    # fn's own keyword arguments stay its own

        It shares this executor's client, queue, threads and results; shut down the executor, not
        the view. Raises `InvalidRequest` for a bad resource specification, `ValueError` for a
        walltime that is not positive."""
        return ExecutorOptions(self, walltime_s=walltime_s, resource_specification=resource_specification)

    def _submit_function(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        walltime_s: float | None,
        resource_specification: dict[str, int] | None,
    ) -> TaskFuture:
        function = self._function_of(fn)
        return self._enqueue(
            function.function_id or _UNREGISTERED, args, kwargs, function, walltime_s, resource_specification
        )

    def _enqueue(
        self,
        function_id: uuid.UUID,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        function: _Function | None,
        walltime_s: float | None,
        resource_specification: dict[str, int] | None,
    ) -> TaskFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            if self._fatal is not None:
                raise self._fatal
        if self.by_reference_bytes is not None:
            args, kwargs = self._by_reference(args, kwargs, self.by_reference_bytes)
        future = TaskFuture(self)
        call = _Call(function_id, serialize_arguments(args, kwargs), walltime_s, resource_specification)
        self._queue.put(_Queued(future, call, function))
        return future

    def _by_reference(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], min_bytes: int
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        def swap(value: Any) -> Any:
            if self.by_reference_bytes is None or buffer_bytes(value) < min_bytes:
                return value
            return self._put_data(value) if self.by_reference_auto else self.client.put_data(value)

        return tuple(swap(value) for value in args), {key: swap(value) for key, value in kwargs.items()}

    def _put_data(self, value: Any) -> Any:
        """`by_reference_bytes="auto"`: the reference, or `value` itself (and no more references
        from this Executor) when the service cannot hand data to endpoints: no blob store (503),
        no data route (404), no URL for endpoints configured. A 413 sends this value inline."""
        try:
            ref = self.client.put_data(value)
        except ServiceError as exc:
            if exc.status in (404, 405, 503):
                log.info("arguments travel inside their tasks: the service stores no data (%s)", exc)
                self.by_reference_bytes = None
            return value
        if self.client.data_endpoint_url is None:
            log.info("arguments travel inside their tasks: the service names no URL for endpoints to fetch data")
            self.by_reference_bytes = None
            return value
        return ref

    def register_function(
        self, fn: Callable[..., Any], *, name: str | None = None, by_value: bool | None = None
    ) -> uuid.UUID:
        """The function's id, registering it now if this Executor has not yet. With `by_value` or
        `name` given, `fn` is serialized and registered again that way, and later submits of
        `fn` use the new registration (e.g. `by_value=True` after a by-reference submit)."""
        again = by_value is not None or name is not None
        function = self._function_of(fn, by_value=bool(by_value), name=name, again=again)
        return self._register(function)

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """`fn` over the iterables, results in order. With `chunksize` N, each task runs N calls
        (as `ProcessPoolExecutor.map` does): fewer, larger tasks for short calls."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, not {chunksize}")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = super().map(_chunk_runner(fn), _chunks(iterables, chunksize), timeout=timeout)
        return itertools.chain.from_iterable(chunks)

    # --- functions ----------------------------------------------------------------------

    def _function_of(
        self, fn: Callable[..., Any], *, by_value: bool = False, name: str | None = None, again: bool = False
    ) -> _Function:
        """The serialized function for `fn`: remembered per function object (unless `again`), and
        shared by every function object with the same body."""
        key = id(fn)
        known = self._functions.get(key)
        if known is not None and not again:
            ref, function = known
            if (ref() if isinstance(ref, weakref.ref) else ref) is fn:
                return function
        body = serialize_function(fn, by_value=by_value)
        function = self._remember_body(body, name or function_name(fn))
        functions = self._functions
        try:
            ref_or_fn: weakref.ref[Any] | Callable[..., Any] = weakref.ref(fn, lambda ref: _forget(functions, key, ref))
        except TypeError:  # builtins and some callables take no weak references
            ref_or_fn = fn
        functions[key] = (ref_or_fn, function)
        return function

    def _remember_body(self, body: bytes, name: str) -> _Function:
        """The `_Function` of this body: the one seen before if any (most recently used now)."""
        digest = content_hash(body)
        with self._register_lock:
            function = self._bodies.pop(digest, None)
            if function is None:
                function = _Function(name, body)
                self._bodies_bytes += len(body)
            self._bodies[digest] = function
            while self._bodies_bytes > _BODY_CACHE_BYTES and len(self._bodies) > 1:
                oldest = next(iter(self._bodies))
                self._bodies_bytes -= len(self._bodies.pop(oldest).body)
        return function

    def _register(self, function: _Function) -> uuid.UUID:
        """Register `function` unless it is registered; its id. Raises the service's error."""
        with self._register_lock:
            if function.function_id is None:
                function.function_id = self.client.register_serialized_function(function.body, name=function.name)
            return function.function_id

    def _register_needed(self, items: list[_Queued]) -> list[_Queued]:
        """Register the functions `items` need (each distinct body once) and give their calls the
        ids; items whose function could not be registered fail. Returns the others."""
        ready = []
        failed: dict[int, BaseException] = {}
        for item in items:
            function = item.function
            if function is None:
                ready.append(item)
                continue
            if id(function) not in failed:
                try:
                    function_id = self._register(function)
                except (TaskfabricError, ValueError) as exc:
                    failed[id(function)] = exc
            if id(function) in failed:
                item.future.set_exception(failed[id(function)])
                continue
            if item.call.function_id != function_id:
                item.call = dataclasses.replace(item.call, function_id=function_id)
            ready.append(item)
        return ready

    def attach(self, task_ids: Iterable[uuid.UUID | str]) -> list[TaskFuture]:
        """Futures for tasks submitted earlier (by this or another process); they resolve from
        the results stream like any other."""
        futures = []
        ids = []
        with self._lock:
            for task_id in task_ids:
                future = TaskFuture(self)
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
        """Stop accepting calls. Calls already submitted are still sent and their futures still
        complete, as in the standard library: with `wait=False` a daemon thread waits for them
        (then closes the results stream), so this returns at once and the process can exit."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            self._cancel_queued()
        self._queue.put(_STOP)
        if wait:
            self._finish()
        else:
            threading.Thread(target=self._finish, name="executor-shutdown", daemon=True).start()

    @wrap_with_logs
    def _finish(self) -> None:
        """After the last submit: wait for every sent call's outcome, then close the stream."""
        self._submitter.join()
        with self._lock:
            waiting = list(self._waiting.values())
        concurrent.futures.wait(waiting)
        self._downloads.shutdown(wait=True)  # futures taken off `_waiting` by a download in flight
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
        live = self._register_needed(live)
        if live:
            self._submit(live)

    def _submit(self, live: list[_Queued], *, registered_again: bool = False) -> None:
        """One request; a batch the service finds too large is split and sent in halves; a batch
        naming a function id the service no longer knows is registered again and resent once.

        The task ids follow from the request's `submission_id` and the caller's user id: they are
        watched on the results stream before the request goes out (`ResultStream.expect`), so a
        result that comes before the answer resolves its future at once. A future names its task
        (`task_id`) once the service has it: when the answer comes, or with its result."""
        submission_id = uuid.uuid4()
        expected = self._expect(live, submission_id)
        try:
            calls = [item.call for item in live]
            task_ids = self.client.submit_calls(
                self.endpoint_id,
                calls,
                task_group_id=self.task_group_id,
                user_endpoint_config=self.user_endpoint_config,
                submission_id=submission_id,
            )
        except PayloadTooLarge as exc:
            self._withdraw(expected)
            if len(live) > 1 and any(limit in str(exc) for limit in _BATCH_LIMITS):
                half = len(live) // 2
                self._submit(live[:half], registered_again=registered_again)
                self._submit(live[half:], registered_again=registered_again)
                return
            _fail(live, exc)
            return
        except NotFoundError as exc:
            self._withdraw(expected)
            stale = self._forget_unknown_functions(live, exc) if not registered_again else False
            if stale:
                live = self._register_needed(live)
                if live:
                    self._submit(live, registered_again=True)
                return
            _fail(live, exc)
            return
        except (TaskfabricError, ValueError) as exc:
            self._withdraw(expected)
            _fail(live, exc)
            return
        if task_ids != expected:  # a service that names its tasks otherwise
            self._withdraw(expected)
            with self._lock:
                for item, task_id in zip(live, task_ids, strict=True):
                    self._waiting[task_id] = item.future
        for item, task_id in zip(live, task_ids, strict=True):
            item.future.task_id = task_id
        self._stream.subscribe(task_ids)

    def _expect(self, live: list[_Queued], submission_id: uuid.UUID) -> list[uuid.UUID]:
        """The batch's task ids, their futures waiting and the stream watching them (none when
        the caller's user id is unknown)."""
        owner_id = self._owner_id()
        if owner_id is None:
            return []
        expected = submission_task_ids(owner_id, submission_id, len(live))
        with self._lock:
            for item, task_id in zip(live, expected, strict=True):
                self._waiting[task_id] = item.future
        self._stream.expect(expected)
        return expected

    def _withdraw(self, expected: list[uuid.UUID]) -> None:
        if not expected:
            return
        with self._lock:
            for task_id in expected:
                self._waiting.pop(task_id, None)
        self._stream.withdraw(expected)

    def _owner_id(self) -> uuid.UUID | None:
        """The caller's user id (asked once; None if the service does not say)."""
        if self._owner is _UNASKED:
            try:
                self._owner = uuid.UUID(str(self.client.whoami()["user_id"]))
            except (TaskfabricError, KeyError, TypeError, ValueError) as exc:
                log.info("the results of submits are watched after their answer (no user id: %s)", exc)
                self._owner = None
        return self._owner if isinstance(self._owner, uuid.UUID) else None

    def _forget_unknown_functions(self, live: list[_Queued], error: NotFoundError) -> bool:
        """Forget the ids of this Executor's functions that `error` names (deleted on the
        service); True if there were any."""
        stale = False
        with self._register_lock:
            for item in live:
                function = item.function
                known = function.function_id if function is not None else None
                if function is not None and known is not None and str(known) in str(error):
                    log.info("function %s is unknown to the service; registering it again", function.function_id)
                    function.function_id = None
                    stale = True
        return stale

    def _cancel_remote(self, future: TaskFuture) -> bool:
        task_id = future.task_id
        assert task_id is not None
        if not self.client.cancel([task_id]).get(task_id, False):
            return False
        with self._lock:
            self._waiting.pop(task_id, None)
        self._stream.forget([task_id])
        try:  # the results stream may have delivered the cancelled outcome already
            future.set_exception(TaskCancelled(f"task {task_id} was cancelled", task_id=task_id))
        except concurrent.futures.InvalidStateError:
            pass
        return True

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.future.cancel()

    # --- results ------------------------------------------------------------------------

    def _on_results(self, frames: list[ResultFrame]) -> None:
        for frame in frames:
            future = self._take_waiting(frame.task_id)
            if future is None:
                continue
            if future.task_id is None:  # the result came before the submit's answer
                future.task_id = frame.task_id
            future.stdout = frame.stdout
            future.stderr = frame.stderr
            if frame.ok and frame.value is None and frame.value_sha256:
                self._downloads.submit(self._download, future, frame)
                continue
            try:
                future.set_result(_value(frame))
            except BaseException as exc:
                future.set_exception(exc)

    @wrap_with_logs
    def _download(self, future: TaskFuture, frame: ResultFrame) -> None:
        """Resolve `future` with a result the worker uploaded (downloaded, its sha256 checked)."""
        try:
            future.set_result(
                self.client.fetch_uploaded_result(
                    frame.task_id, sha256=frame.value_sha256 or "", worker_python=frame.details.worker_python
                )
            )
        except BaseException as exc:
            future.set_exception(exc)

    def _on_unknown(self, task_ids: set[uuid.UUID]) -> None:
        for task_id in task_ids:
            future = self._take_waiting(task_id)
            if future is not None:
                future.set_exception(
                    NotFoundError(f"task {task_id} is unknown to the service (or not yours)", status=404)
                )

    def _take_waiting(self, task_id: uuid.UUID) -> TaskFuture | None:
        """The pending future of `task_id`, no longer waiting (None: none, or already done)."""
        with self._lock:
            future = self._waiting.pop(task_id, None)
        return None if future is None or future.done() else future

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
        return self.executor._submit_function(fn, args, kwargs, self.walltime_s, self.resource_specification)

    def submit_to_registered_function(
        self, function_id: uuid.UUID | str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> TaskFuture:
        return self.executor._enqueue(
            uuid.UUID(str(function_id)), args, kwargs or {}, None, self.walltime_s, self.resource_specification
        )

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


def _fail(live: list[_Queued], error: BaseException) -> None:
    """Fail the futures of a batch the service did not accept; a future that its result resolved
    already (the broker took a copy before the submit failed) keeps that result."""
    for item in live:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            item.future.set_exception(error)


def _forget(
    functions: dict[int, tuple[weakref.ref[Any] | Callable[..., Any], _Function]], key: int, ref: weakref.ref[Any]
) -> None:
    """A remembered function object died: drop its entry (unless its id was reused since)."""
    known = functions.get(key)
    if known is not None and known[0] is ref:
        functions.pop(key, None)


def resolve_endpoint(client: Client, endpoint: uuid.UUID | str) -> uuid.UUID:
    """An endpoint id, given one or the name of one of the caller's endpoints (or, when none of
    theirs has the name, of one shared with them). Raises `NotFoundError` when no endpoint has that
    name, `InvalidRequest` when several do."""
    if isinstance(endpoint, uuid.UUID):
        return endpoint
    try:
        return uuid.UUID(str(endpoint))
    except ValueError:
        pass
    named = [entry for entry in client.list_endpoints() if entry.get("name") == endpoint]
    # your own endpoint's name is never made ambiguous by someone sharing one of the same name
    named = [entry for entry in named if entry.get("role", "owner") == "owner"] or named
    if len(named) == 1:
        return uuid.UUID(str(named[0]["id"]))
    if not named:
        raise NotFoundError(
            f"no endpoint named {endpoint!r} among yours or those shared with you: give an endpoint id (a "
            "UUID, as `Client.list_endpoints()` shows) or the exact name of one of your endpoints",
            status=404,
            code="NOT_FOUND",
        )
    ids = ", ".join(str(entry["id"]) for entry in named)
    raise InvalidRequest(f"the name {endpoint!r} is ambiguous ({len(named)} endpoints: {ids}): give an endpoint id")


def _chunks(iterables: tuple[Iterable[Any], ...], size: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    """The argument tuples of `zip(*iterables)`, `size` at a time."""
    calls = zip(*iterables, strict=False)
    while chunk := tuple(itertools.islice(calls, size)):
        yield chunk


def _chunk_runner(fn: Callable[..., Any]) -> Callable[[tuple[tuple[Any, ...], ...]], list[Any]]:
    """A function running `fn` on each argument tuple of a chunk. Nested, so it travels by value
    with `fn` in it: runners of the same `fn` have the same body and register once."""

    def run_chunk(chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
        return [fn(*args) for args in chunk]

    return run_chunk


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


def _value(frame: ResultFrame) -> Any:
    worker_python = frame.details.worker_python
    if frame.ok and frame.value is not None:
        return value_from_result(frame.value, worker_python=worker_python, task_id=frame.task_id)
    error = render(frame.error, binary=True) if frame.error is not None else {}
    raise exception_from_error(error, worker_python=worker_python, task_id=frame.task_id)
