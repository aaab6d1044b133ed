"""Turning functions and arguments into bytes, and results back into values or exceptions.

Functions are cloudpickled: defined in a notebook or `__main__`, they travel by value; defined in an
importable module, they travel by reference and that module must be importable on the endpoint
(`by_value=True` ships the module's functions by value instead). Arguments travel as a cloudpickled
`(args, kwargs)` pair. Only the client unpickles its own results.

Large arguments and results are compressed (zstd) when that pays, in the frame of
`taskfabric.protocol.payloads`; unframed payloads decode as before.

A failed task is re-raised as the original exception type when it can be rebuilt here, with the
remote traceback attached as its `__cause__` (as `concurrent.futures.ProcessPoolExecutor` does);
otherwise as the `TaskFailed` subclass for its error code, carrying the remote traceback text.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import platform
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from taskfabric.errors import DeserializationFailed, ErrorCode, TaskExecutionFailed, TaskFailed
from taskfabric.protocol.payloads import DEFAULT_COMPRESSION, Compression, decode_payload, encode_payload

__all__ = [
    "CLIENT_PYTHON",
    "RemoteTraceback",
    "buffer_bytes",
    "content_hash",
    "exception_from_error",
    "serialize_arguments",
    "serialize_data",
    "serialize_function",
    "value_from_result",
]

CLIENT_PYTHON = platform.python_version()


class RemoteTraceback(Exception):
    """The traceback of the worker, attached as `__cause__` of a re-raised remote exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def serialize_function(fn: Callable[..., Any], *, by_value: bool = False) -> bytes:
    """The cloudpickled function; `by_value` also ships its module's code by value."""
    if not callable(fn):
        raise TypeError(f"expected a function, got {type(fn).__name__}")
    module = inspect.getmodule(fn)
    with _pickled_by_value(module if by_value else None):
        return cloudpickle.dumps(fn, protocol=5)


@contextlib.contextmanager
def _pickled_by_value(module: types.ModuleType | None) -> Iterator[None]:
    if module is None or module.__name__ in ("__main__", "builtins") or module.__name__ in sys.builtin_module_names:
        yield
        return
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def serialize_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, compression: Compression = DEFAULT_COMPRESSION
) -> bytes:
    """The cloudpickled `(args, kwargs)` pair, compressed when that pays under `compression`."""
    return encode_payload(cloudpickle.dumps((args, kwargs), protocol=5), compression)


def serialize_data(value: Any, *, compression: Compression = DEFAULT_COMPRESSION) -> bytes:
    """An argument to upload by reference: cloudpickled, compressed when that pays."""
    return encode_payload(cloudpickle.dumps(value, protocol=5), compression)


def buffer_bytes(value: Any) -> int:
    """The size of a buffer-like argument without pickling it: bytes-likes, and objects whose type
    has `nbytes` (numpy arrays); 0 for anything else. Looks `nbytes` up on the type first, so a lazy
    proxy (e.g. ProxyStore's) is not resolved by asking."""
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    if getattr(type(value), "nbytes", None) is None:
        return 0
    size = getattr(value, "nbytes", 0)
    return size if isinstance(size, int) else 0


def content_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def value_from_result(value: bytes | bytearray, *, worker_python: str = "", task_id: object = None) -> Any:
    """Unpickle a task's return value (naming a Python version mismatch if that is the cause)."""
    try:
        return cloudpickle.loads(decode_payload(value))
    except Exception as exc:
        raise DeserializationFailed(
            f"the result could not be unpickled here: {type(exc).__name__}: {exc}{_version_note(worker_python)}",
            task_id=task_id,
        ) from None


def exception_from_error(error: dict[str, Any], *, worker_python: str = "", task_id: object = None) -> BaseException:
    """The exception a failed task raises on the client."""
    code = str(error.get("code", ErrorCode.TASK_FAILED))
    message = str(error.get("message", "the task failed"))
    remote_traceback = str(error.get("traceback") or "")
    pickled = error.get("exception")
    exception_type = str(error.get("exception_type") or "")
    if code == ErrorCode.TASK_FAILED and pickled:
        rebuilt, why_not = _rebuild(pickled)
        if rebuilt is not None:
            if remote_traceback:
                rebuilt.__cause__ = RemoteTraceback(remote_traceback)
            rebuilt.task_id = task_id  # type: ignore[attr-defined]
            return rebuilt
        message = f"{message} (remote exception {exception_type or 'object'} could not be unpickled: {why_not})"
    elif code == ErrorCode.TASK_FAILED and exception_type:
        message = (
            f"{message} (remote exception type {exception_type}; "
            "the worker could not pickle the exception object, or it was too large)"
        )
    kind = TaskExecutionFailed if code == ErrorCode.TASK_FAILED else TaskFailed.for_code(code)
    if code == ErrorCode.DESERIALIZATION_FAILED:
        message += _version_note(worker_python)
    return kind(message, remote_traceback=remote_traceback, task_id=task_id, exception_type=exception_type)


def _rebuild(pickled: bytes) -> tuple[BaseException | None, str]:
    """The unpickled exception, or None and why not (e.g. a custom `__init__` with more arguments
    than the exception's `args`, or a class not importable here)."""
    try:
        exc = cloudpickle.loads(pickled)
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(exc, BaseException):
        return None, f"it is a {type(exc).__name__}, not an exception"
    return exc, ""


def _version_note(worker_python: str) -> str:
    if worker_python and _minor(worker_python) != _minor(CLIENT_PYTHON):
        return (
            f" [Python version mismatch: the worker runs Python {worker_python}, this client Python {CLIENT_PYTHON}; "
            "pickled objects do not travel between minor versions]"
        )
    return ""


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
