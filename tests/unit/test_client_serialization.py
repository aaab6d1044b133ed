"""Client-side serialization: functions by value or reference, rebuilt remote exceptions, version notes."""

from __future__ import annotations

import json

import cloudpickle
import pytest

from taskfabric.client import RemoteTraceback, TaskExecutionFailed, WorkerLost
from taskfabric.client.serialization import (
    CLIENT_PYTHON,
    exception_from_error,
    serialize_arguments,
    serialize_function,
    value_from_result,
)
from taskfabric.errors import DeserializationFailed, ErrorCode


def test_functions_and_arguments_round_trip() -> None:
    def add(a: int, b: int = 1) -> int:
        return a + b

    fn = cloudpickle.loads(serialize_function(add))
    args, kwargs = cloudpickle.loads(serialize_arguments((2,), {"b": 5}))
    assert fn(*args, **kwargs) == 7


def test_module_functions_travel_by_reference_unless_by_value() -> None:
    by_reference = serialize_function(json.dumps)
    assert len(by_reference) < 100  # just a reference to json.dumps
    with pytest.raises(TypeError, match="expected a function"):
        serialize_function(42)  # type: ignore[arg-type]


def test_original_exception_is_rebuilt_with_the_remote_traceback() -> None:
    error = {
        "code": ErrorCode.TASK_FAILED,
        "message": "ValueError: nope",
        "traceback": 'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: nope\n',
        "exception_type": "builtins.ValueError",
        "exception": cloudpickle.dumps(ValueError("nope")),
    }
    exc = exception_from_error(error, task_id="t1")
    assert type(exc) is ValueError
    assert str(exc) == "nope"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "in f" in str(exc.__cause__)


def test_an_exception_that_cannot_be_rebuilt_becomes_task_execution_failed() -> None:
    error = {
        "code": ErrorCode.TASK_FAILED,
        "message": "Boom: x",
        "traceback": "TB",
        "exception_type": "mylib.Boom",
        "exception": b"\x80garbage",
    }
    exc = exception_from_error(error)
    assert isinstance(exc, TaskExecutionFailed)
    assert "mylib.Boom" in str(exc)
    assert exc.remote_traceback == "TB"
    assert "Remote traceback" in str(exc)


def test_system_failures_map_to_their_types() -> None:
    exc = exception_from_error({"code": ErrorCode.WORKER_LOST, "message": "worker died"})
    assert isinstance(exc, WorkerLost)
    assert "worker died" in str(exc)


def test_version_mismatch_is_named() -> None:
    other = "2.7.18"
    exc = exception_from_error(
        {"code": ErrorCode.DESERIALIZATION_FAILED, "message": "could not deserialize"}, worker_python=other
    )
    assert "Python version mismatch" in str(exc) and other in str(exc) and CLIENT_PYTHON in str(exc)
    with pytest.raises(DeserializationFailed, match="Python version mismatch"):
        value_from_result(b"\x80\x05garbage", worker_python=other)
    assert value_from_result(cloudpickle.dumps({"a": 1})) == {"a": 1}


class _NeedsTwo(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def test_an_exception_that_does_not_unpickle_says_why_and_keeps_the_remote_traceback() -> None:
    error = {
        "code": ErrorCode.TASK_FAILED,
        "message": "_NeedsTwo: two",
        "traceback": "Traceback ...\n_NeedsTwo: two\n",
        "exception_type": "mylib._NeedsTwo",
        "exception": cloudpickle.dumps(_NeedsTwo("two", 2)),  # pickles; unpickling calls _NeedsTwo("two")
    }
    exc = exception_from_error(error, task_id="t2")
    assert isinstance(exc, TaskExecutionFailed)
    assert "mylib._NeedsTwo could not be unpickled: TypeError" in str(exc)
    assert "not importable" not in str(exc)
    assert exc.exception_type == "mylib._NeedsTwo"
    assert exc.remote_traceback == error["traceback"]
    assert exc.task_id == "t2"
