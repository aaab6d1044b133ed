"""Running tasks in a worker: values, errors with remote tracebacks, limits, deserialization."""

from __future__ import annotations

import sys
import time
import types
import uuid

import cloudpickle
import numpy as np
import pytest

from taskfabric.errors import ErrorCode
from taskfabric.manager.execution import WORKER_PYTHON, TaskRunner
from taskfabric.protocol import FunctionBody, Result, Task


def run(
    fn: object, *args: object, walltime_s: float | None = None, max_result_bytes: int = 1 << 20, **kwargs: object
) -> Result:
    body = FunctionBody(function_id=uuid.uuid4(), body=cloudpickle.dumps(fn), python_version=WORKER_PYTHON)
    runner = TaskRunner(max_result_bytes=max_result_bytes)
    runner.add_functions([body])
    task = Task(
        task_id=uuid.uuid4(),
        function_id=body.function_id,
        payload=cloudpickle.dumps((args, kwargs)),
        walltime_s=walltime_s,
    )
    result = runner.run(task)
    assert result.task_id == task.task_id
    assert result.worker_python == WORKER_PYTHON
    return result


def value(result: Result) -> object:
    assert result.ok, result.error
    assert result.value is not None
    return cloudpickle.loads(result.value)


def test_value_args_kwargs_and_timing() -> None:
    result = run(lambda a, b=1, *, c: (a, b, c), 1, b=2, c=3)
    assert value(result) == (1, 2, 3)
    assert result.received_at is not None and result.started_at is not None and result.finished_at is not None
    assert result.received_at <= result.started_at <= result.finished_at


def test_closure_and_numpy() -> None:
    offset = np.arange(3)

    def shifted(array: np.ndarray) -> np.ndarray:
        return array + offset

    assert (value(run(shifted, np.ones(3))) == np.array([1.0, 2.0, 3.0])).all()


def test_values_plain_pickle_cannot_reach_fall_back_to_cloudpickle() -> None:
    def makes_things() -> tuple[object, object]:
        class Point:
            def __init__(self, x: int) -> None:
                self.x = x

        return Point(3), lambda y: y + 1

    point, increment = value(run(makes_things))  # type: ignore[misc]
    assert point.x == 3
    assert increment(1) == 2


def test_exception_with_remote_traceback_and_pickled_exception() -> None:
    def fails(x: int) -> None:
        raise KeyError(f"missing {x}")

    result = run(fails, 7)
    assert not result.ok and result.error is not None
    assert result.error.code == ErrorCode.TASK_FAILED
    assert result.error.exception_type == "builtins.KeyError"
    assert "KeyError: 'missing 7'" in result.error.traceback
    assert "in fails" in result.error.traceback
    assert "execution.py" not in result.error.traceback  # our own frames are not the user's business
    assert result.error.exception is not None
    assert isinstance(cloudpickle.loads(result.error.exception), KeyError)


def test_unpicklable_exception_still_reports_type_and_traceback() -> None:
    class Weird(Exception):
        def __reduce__(self) -> tuple[object, ...]:
            raise TypeError("no pickling")

    def fails() -> None:
        raise Weird("odd")

    result = run(fails)
    assert result.error is not None
    assert result.error.exception is None
    assert result.error.exception_type.endswith("Weird")
    assert "odd" in result.error.traceback


def test_system_exit_is_a_task_failure_not_a_worker_exit() -> None:
    result = run(sys.exit, 3)
    assert result.error is not None and result.error.code == ErrorCode.TASK_FAILED
    assert "SystemExit" in result.error.message


def test_result_over_the_limit_is_a_typed_error() -> None:
    result = run(lambda: b"x" * 5000, max_result_bytes=4096)
    assert result.error is not None
    assert result.error.code == ErrorCode.RESULT_TOO_LARGE
    assert "over this endpoint's limit of 4096 bytes" in result.error.message


def test_unserializable_result_is_a_typed_error() -> None:
    import threading

    result = run(threading.Lock)
    assert result.error is not None and result.error.code == ErrorCode.TASK_FAILED
    assert "could not be serialized" in result.error.message


def test_walltime_exceeded() -> None:
    def sleepy() -> None:
        time.sleep(5)

    started = time.monotonic()
    result = run(sleepy, walltime_s=0.2)
    assert time.monotonic() - started < 3
    assert result.error is not None
    assert result.error.code == ErrorCode.WALLTIME_EXCEEDED
    assert "walltime of 0.2 s" in result.error.message
    assert "sleepy" in result.error.traceback


def test_garbage_function_body_names_a_python_version_mismatch() -> None:
    runner = TaskRunner(max_result_bytes=1024)
    body = FunctionBody(function_id=uuid.uuid4(), body=b"\x80\x05not a pickle", python_version="3.7.1")
    runner.add_functions([body])
    result = runner.run(Task(task_id=uuid.uuid4(), function_id=body.function_id, payload=cloudpickle.dumps(((), {}))))
    assert result.error is not None
    assert result.error.code == ErrorCode.DESERIALIZATION_FAILED
    assert "Python version mismatch" in result.error.message
    assert "3.7.1" in result.error.message and WORKER_PYTHON in result.error.message


def test_function_from_a_missing_module_says_it_travels_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("taskfabric_test_only_module")
    exec("def helper():\n    return 1\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    pickled = cloudpickle.dumps(module.helper)  # importable module: pickled by reference
    monkeypatch.delitem(sys.modules, module.__name__)
    runner = TaskRunner(max_result_bytes=1024)
    body = FunctionBody(function_id=uuid.uuid4(), body=pickled, python_version=WORKER_PYTHON)
    runner.add_functions([body])
    result = runner.run(Task(task_id=uuid.uuid4(), function_id=body.function_id, payload=cloudpickle.dumps(((), {}))))
    assert result.error is not None
    assert result.error.code == ErrorCode.DESERIALIZATION_FAILED
    assert "travel by reference" in result.error.message
    assert "taskfabric_test_only_module" in result.error.message


def test_missing_body_and_bad_payload_are_typed_errors() -> None:
    runner = TaskRunner(max_result_bytes=1024)
    result = runner.run(Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b""))
    assert result.error is not None and "never reached this worker" in result.error.message
    body = FunctionBody(function_id=uuid.uuid4(), body=cloudpickle.dumps(len))
    runner.add_functions([body])
    result = runner.run(Task(task_id=uuid.uuid4(), function_id=body.function_id, payload=cloudpickle.dumps([1, 2])))
    assert result.error is not None and "not an (args, kwargs) pair" in result.error.message


def _unreachable_upload(fn: object, *, max_result_bytes: int) -> Result:
    """A task whose grant names a forwarder nobody listens on (a closed local port)."""
    body = FunctionBody(function_id=uuid.uuid4(), body=cloudpickle.dumps(fn), python_version=WORKER_PYTHON)
    runner = TaskRunner(max_result_bytes=max_result_bytes)
    runner.add_functions([body])
    return runner.run(
        Task(
            task_id=uuid.uuid4(),
            function_id=body.function_id,
            payload=cloudpickle.dumps(((), {})),
            result_upload_url="http://127.0.0.1:9",
            result_upload_grant="grant",
            result_upload_min_bytes=1000,
        )
    )


def test_a_failed_result_upload_falls_back_to_the_broker_when_the_result_fits() -> None:
    fits = _unreachable_upload(lambda: b"x" * 5000, max_result_bytes=1 << 20)
    assert fits.value_blob is None and value(fits) == b"x" * 5000
    too_large = _unreachable_upload(lambda: b"x" * 5000, max_result_bytes=2000)
    assert not too_large.ok and too_large.error is not None
    assert too_large.error.code == ErrorCode.RESULT_TOO_LARGE and "cannot upload" in too_large.error.message
