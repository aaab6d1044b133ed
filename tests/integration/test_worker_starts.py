"""When a task's start is reported (`started_report_delay_s`), through real worker processes.

A task shorter than the delay is reported by its result alone (one message on every hop instead
of two); a longer one shows `running` once it has run that long. (The endpoint's setting reaches
the manager's command line: tests/unit/test_interchange_link.py.)
"""

from __future__ import annotations

import select
import time
import uuid
from pathlib import Path

import cloudpickle

from taskfabric.manager.execution import WORKER_PYTHON
from taskfabric.manager.pool import WorkerPool
from taskfabric.protocol import FunctionBody, Result, Task, TaskStarted


def _nap(seconds: float) -> float:
    import time as clock

    clock.sleep(seconds)
    return seconds


def _task(body: FunctionBody, seconds: float) -> Task:
    return Task(task_id=uuid.uuid4(), function_id=body.function_id, payload=cloudpickle.dumps(((seconds,), {})))


def _run(pool: WorkerPool, body: FunctionBody, task: Task) -> tuple[list[TaskStarted], Result]:
    """Run `task` on the pool's worker: the starts it reported, and its result."""
    worker = pool.workers[0]
    pool.send(worker, [task], {body.function_id: body}, WORKER_PYTHON)
    starts: list[TaskStarted] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        select.select([worker.from_worker], [], [], 1.0)
        results, started, died = pool.read(worker)
        assert not died
        starts.extend(started)
        if results:
            (result,) = results
            return starts, result
    raise AssertionError(f"no result for task {task.task_id}")


def test_only_a_task_that_runs_past_the_delay_reports_its_start(tmp_path: Path) -> None:
    body = FunctionBody(function_id=uuid.uuid4(), body=cloudpickle.dumps(_nap), python_version=WORKER_PYTHON)
    pool = WorkerPool(1, max_result_bytes=1 << 20, task_workdir=tmp_path, report_start_after_s=0.5)
    pool.start()
    try:
        short = _task(body, 0.05)
        starts, result = _run(pool, body, short)
        assert result.ok and result.task_id == short.task_id
        assert starts == []  # its result alone tells it ran
        assert result.started_at is not None

        long = _task(body, 1.5)
        starts, result = _run(pool, body, long)
        assert result.ok and result.task_id == long.task_id
        assert [event.task_id for event in starts] == [long.task_id]
        assert result.started_at is not None and abs(starts[0].started_at - result.started_at) < 0.5
    finally:
        pool.stop()
