"""Running one task inside a worker process: the only place user payloads are unpickled.

`TaskRunner.run(task)` deserializes the function (cached by function id) and its `(args, kwargs)`,
calls it under an optional walltime, and packs the outcome into a protocol `Result`: the pickled
return value, or a `TaskError` with the remote traceback, the exception (pickled, when it pickles)
and a code saying whose fault it was. It never raises for anything the user's code does.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import platform
import signal
import sys
import time
import traceback
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from taskfabric.errors import ErrorCode
from taskfabric.manager.data_refs import DataFetcher, DataFetchError
from taskfabric.manager.globus_compute import ComputeCodec, GlobusComputeUnavailable, is_compute_body
from taskfabric.manager.result_uploads import ResultUploader, ResultUploadError, should_upload
from taskfabric.protocol import FunctionBody, Result, ResultBlob, Task, TaskError
from taskfabric.protocol.data_refs import DataRef
from taskfabric.protocol.payloads import DEFAULT_COMPRESSION, Compression, decode_payload, encode_payload

__all__ = ["WORKER_PYTHON", "TaskRunner", "WalltimeExceededError"]

log = logging.getLogger(__name__)

WORKER_PYTHON = platform.python_version()


class WalltimeExceededError(Exception):
    """Raised inside a task's code when its walltime runs out."""


class _DeserializationError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


class TaskRunner:
    """Runs tasks for one worker, caching deserialized functions by id."""

    def __init__(self, *, max_result_bytes: int, client_python: str = "") -> None:
        self.max_result_bytes = max_result_bytes
        self.client_python = client_python
        self._bodies: dict[uuid.UUID, FunctionBody] = {}
        self._functions: dict[uuid.UUID, Callable[..., Any]] = {}
        self._compute = ComputeCodec()  # Globus-Compute-format tasks (manager/globus_compute.py)
        self._data = DataFetcher()  # arguments passed by reference (manager/data_refs.py)
        self._uploads = ResultUploader()  # large results (manager/result_uploads.py)

    def add_functions(self, bodies: list[FunctionBody]) -> None:
        """Remember function bodies (deserialized lazily, on first use)."""
        for body in bodies:
            if body.function_id not in self._bodies:
                self._bodies[body.function_id] = body

    def run(self, task: Task) -> Result:
        """Run one task; always returns a Result."""
        received_at = time.time()
        body = self._bodies.get(task.function_id)
        compute = body is not None and is_compute_body(body.body)
        try:
            if compute:
                assert body is not None
                function, args, kwargs = self._compute_call(body, task)
            else:
                function = self._function(task.function_id)
                args, kwargs = self._arguments(task)
        except GlobusComputeUnavailable as exc:
            return self._failure(task, ErrorCode.PAYLOAD_FORMAT_UNSUPPORTED, str(exc), "", received_at, received_at)
        except _DeserializationError as exc:
            return self._failure(task, ErrorCode.DESERIALIZATION_FAILED, str(exc), "", received_at, received_at)
        except DataFetchError as exc:
            return self._failure(task, exc.code, str(exc), "", received_at, received_at)
        started_at = time.time()
        try:
            if task.walltime_s:
                with _walltime(task.walltime_s):
                    value = function(*args, **kwargs)
            else:  # no timer to arm: not even a context manager's cost
                value = function(*args, **kwargs)
        except WalltimeExceededError as exc:
            return self._failure(
                task, ErrorCode.WALLTIME_EXCEEDED, str(exc), _user_traceback(exc), received_at, started_at
            )
        except BaseException as exc:  # the user's code may raise anything, SystemExit included
            if isinstance(exc, KeyboardInterrupt):
                raise
            return self._raised(task, exc, received_at, started_at)
        return self._success(task, value, received_at, started_at, compute=compute)

    # --- deserialization ----------------------------------------------------------------

    def _function(self, function_id: uuid.UUID) -> Callable[..., Any]:
        function = self._functions.get(function_id)
        if function is not None:
            return function
        body = self._bodies.get(function_id)
        if body is None:
            raise _DeserializationError(f"the body of function {function_id} never reached this worker")
        try:
            loaded = cloudpickle.loads(body.body)
        except Exception as exc:
            raise _DeserializationError(_explain_unpickling("function", exc, body.python_version)) from None
        if not callable(loaded):
            raise _DeserializationError(
                f"function {function_id} deserialized to a {type(loaded).__name__}, not a callable"
            )
        self._functions[function_id] = loaded
        return loaded

    def _compute_call(
        self, body: FunctionBody, task: Task
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """A Globus-Compute-format task, decoded with the SDK's serializer (`GlobusComputeUnavailable`
        when this worker lacks it)."""
        try:
            return self._compute.load_call(body.body, task.payload)
        except GlobusComputeUnavailable:
            raise
        except Exception as exc:
            raise _DeserializationError(_explain_unpickling("Globus Compute task", exc, body.python_version)) from None

    def _arguments(self, task: Task) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            loaded = cloudpickle.loads(decode_payload(task.payload))
        except Exception as exc:
            raise _DeserializationError(_explain_unpickling("arguments", exc, self.client_python)) from None
        if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[1], dict)):
            raise _DeserializationError("the task payload is not an (args, kwargs) pair")
        args, kwargs = loaded
        return tuple(self._resolved(value) for value in args), {
            key: self._resolved(value) for key, value in kwargs.items()
        }

    def _resolved(self, value: Any) -> Any:
        """A top-level argument, or the object its `DataRef` names (downloaded and checked)."""
        if not isinstance(value, DataRef):
            return value
        data = self._data.fetch(value)
        try:
            return cloudpickle.loads(decode_payload(data))
        except Exception as exc:
            raise _DeserializationError(
                _explain_unpickling("argument passed by reference", exc, self.client_python)
            ) from None

    # --- outcomes -----------------------------------------------------------------------

    def _success(self, task: Task, value: Any, received_at: float, started_at: float, *, compute: bool) -> Result:
        finished_at = time.time()
        try:
            data = self._compute.dump_value(value) if compute else dump_value(value)
        except Exception as exc:
            return self._failure(
                task,
                ErrorCode.TASK_FAILED,
                f"the return value ({type(value).__name__}) could not be serialized: {type(exc).__name__}: {exc}",
                "",
                received_at,
                started_at,
            )
        blob: ResultBlob | None = None
        # a Globus-Compute-format result goes through the broker: the forwarder relays its bytes
        # to the SDK's result queue as soon as it stores them
        if not compute and should_upload(task, len(data)):
            try:
                blob = self._uploads.upload(task, data)
            except ResultUploadError as exc:
                if exc.too_large or len(data) > self.max_result_bytes:
                    return self._failure(task, ErrorCode.RESULT_TOO_LARGE, str(exc), "", received_at, started_at)
                log.warning("task %s: %s; sending the result through the broker instead", task.task_id, exc)
        if blob is not None:
            return Result(
                task_id=task.task_id,
                ok=True,
                value_blob=blob,
                worker_python=WORKER_PYTHON,
                received_at=received_at,
                started_at=started_at,
                finished_at=finished_at,
            )
        if len(data) > self.max_result_bytes:
            message = (
                f"the result is {len(data)} bytes, over this endpoint's limit of {self.max_result_bytes} bytes "
                "(max_result_bytes); return a smaller value or write large outputs to shared storage"
            )
            return self._failure(task, ErrorCode.RESULT_TOO_LARGE, message, "", received_at, started_at)
        return Result(
            task_id=task.task_id,
            ok=True,
            value=data,
            worker_python=WORKER_PYTHON,
            received_at=received_at,
            started_at=started_at,
            finished_at=finished_at,
        )

    def _raised(self, task: Task, exc: BaseException, received_at: float, started_at: float) -> Result:
        finished_at = time.time()
        pickled: bytes | None
        try:
            pickled = cloudpickle.dumps(exc, protocol=5)
        except Exception:
            pickled = None
        if pickled is not None and len(pickled) > self.max_result_bytes:
            pickled = None
        error = TaskError(
            code=ErrorCode.TASK_FAILED,
            message=_one_line(exc),
            traceback=_user_traceback(exc),
            exception_type=_qualified_name(type(exc)),
            exception=pickled,
        )
        return Result(
            task_id=task.task_id,
            ok=False,
            error=error,
            worker_python=WORKER_PYTHON,
            received_at=received_at,
            started_at=started_at,
            finished_at=finished_at,
        )

    @staticmethod
    def _failure(
        task: Task, code: ErrorCode, message: str, remote_traceback: str, received_at: float, started_at: float
    ) -> Result:
        return Result(
            task_id=task.task_id,
            ok=False,
            error=TaskError(code=code, message=message, traceback=remote_traceback),
            worker_python=WORKER_PYTHON,
            received_at=received_at,
            started_at=started_at,
            finished_at=time.time(),
        )


# --- helpers ------------------------------------------------------------------------------


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the user's frames on (our own calling frames are dropped)."""
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _explain_unpickling(what: str, exc: Exception, origin_python: str) -> str:
    """A deserialization error that names the likely cause."""
    message = f"could not deserialize the {what} on this worker: {type(exc).__name__}: {exc}"
    if origin_python and _minor(origin_python) != _minor(WORKER_PYTHON):
        message += (
            f". Python version mismatch: the {what} was serialized on Python {origin_python}, "
            f"this worker runs Python {WORKER_PYTHON}; pickled code does not travel between minor versions - "
            "run the endpoint's workers on the same Python version as the client"
        )
    if isinstance(exc, ModuleNotFoundError):
        message += (
            f". Functions and classes defined in importable modules travel by reference: install module "
            f"{exc.name!r} where the endpoint's workers run, or register the function from a notebook or "
            "__main__ (which travels by value)"
        )
    return message


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@contextlib.contextmanager
def _walltime(walltime_s: float | None) -> Iterator[None]:
    """Raise WalltimeExceededError in the calling (main) thread after `walltime_s` seconds."""
    if not walltime_s:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise WalltimeExceededError(f"the task ran past its walltime of {walltime_s:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, walltime_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


if sys.platform == "win32":  # pragma: no cover - workers run on POSIX
    raise ImportError("taskfabric workers need a POSIX system (SIGALRM walltimes)")


def dump_value(value: Any, compression: Compression = DEFAULT_COMPRESSION) -> bytes:
    """Pickle a return value: plain pickle first (ten times cheaper for the common small values),
    cloudpickle for what plain pickle cannot reach (lambdas, classes the task itself defined).
    Both produce ordinary pickles that the client loads the same way; a large one is compressed
    when that pays (`taskfabric.protocol.payloads`)."""
    try:
        pickled = pickle.dumps(value, protocol=5)
    except Exception:
        pickled = cloudpickle.dumps(value, protocol=5)
    return encode_payload(pickled, compression)
