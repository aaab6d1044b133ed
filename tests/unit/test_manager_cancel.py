"""The manager's cancel bookkeeping (`CancelBook`) and the worker's skipping of cancelled tasks."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from taskfabric.errors import ErrorCode
from taskfabric.manager.cancel import CancelBook
from taskfabric.manager.execution import WORKER_PYTHON, TaskRunner
from taskfabric.manager.frames import FrameReader, write_frame
from taskfabric.manager.slot import CANCEL_MARK_OFFSET, SLOT_BYTES
from taskfabric.manager.surroundings import TaskSurroundings
from taskfabric.manager.worker import ResultWriter, RunningSlot, serve
from taskfabric.protocol import CancelTasks, FunctionBody, ResultBatch, Task, TaskBatch, pack, unpack_as


def test_a_worker_killed_for_its_cancelled_task_is_no_crash() -> None:
    book = CancelBook()
    task = uuid.uuid4()
    book.mark([task])
    book.schedule_kill(0, task, now=100.0, grace_period_s=10.0)
    assert book.worker_died(0, task) is True
    assert book.due_kills(1000.0) == []  # the death settled the kill


def test_an_ordinary_crash_stays_a_crash() -> None:
    book = CancelBook()
    cancelled, other = uuid.uuid4(), uuid.uuid4()
    book.mark([cancelled])
    assert book.worker_died(1, other) is False
    assert book.worker_died(1, None) is False


def test_kills_fall_due_after_the_grace_period_once() -> None:
    book = CancelBook()
    task = uuid.uuid4()
    book.schedule_kill(2, task, now=100.0, grace_period_s=5.0)
    assert book.next_kill_in_s(101.0) == pytest.approx(4.0)
    assert book.due_kills(104.9) == []
    due = book.due_kills(105.0)
    assert [(kill.worker_index, kill.task_id) for kill in due] == [(2, task)]
    assert book.due_kills(200.0) == []
    assert book.next_kill_in_s(200.0) is None


def test_an_answer_settles_the_cancel_and_its_kill() -> None:
    """A task that finished before its cancel landed: its worker must not be killed later."""
    book = CancelBook()
    task = uuid.uuid4()
    book.mark([task])
    book.schedule_kill(0, task, now=0.0, grace_period_s=1.0)
    book.answered([task])
    assert not book.is_cancelled(task)
    assert book.pending == 0
    assert book.due_kills(10.0) == []


# --- the worker ---------------------------------------------------------------------------


def _write_marker(path: str, text: str) -> str:
    with open(path, "a") as handle:
        handle.write(text + "\n")
    return text


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def _task(function_id: uuid.UUID, *args: Any) -> Task:
    return Task(task_id=uuid.uuid4(), function_id=function_id, payload=cloudpickle.dumps((args, {})))


@pytest.mark.usefixtures("restore_sigterm")
def test_the_worker_skips_tasks_of_its_batch_cancelled_before_they_start(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    body = FunctionBody(function_id=uuid.uuid4(), body=cloudpickle.dumps(_write_marker), python_version=WORKER_PYTHON)
    first, second, third = (_task(body.function_id, str(marker), name) for name in ("first", "second", "third"))
    task_read, task_write = os.pipe()
    result_read, result_write = os.pipe()
    slot_path = tmp_path / "slot"
    slot_path.write_bytes(bytes(SLOT_BYTES))
    # the manager cancels the second task while the batch is in the worker's hands: the frame,
    # then the slot's cancel mark moved (as WorkerPool.cancel does)
    write_frame(task_write, pack(TaskBatch(tasks=[first, second, third], functions=[body])))
    write_frame(task_write, pack(CancelTasks(task_ids=[second.task_id])))
    slot_path.write_bytes(bytes(CANCEL_MARK_OFFSET) + b"\x01")
    os.close(task_write)
    writer = ResultWriter(result_write)
    surroundings = TaskSurroundings(max_output_bytes=1000, workdir_root=tmp_path / "tasks")
    serve(task_read, writer, TaskRunner(max_result_bytes=1 << 20), RunningSlot(str(slot_path)), surroundings)
    writer.close()
    os.close(result_write)
    data = b""
    while chunk := os.read(result_read, 1 << 16):
        data += chunk
    results = {
        result.task_id: result for frame in FrameReader().feed(data) for result in unpack_as(frame, ResultBatch).results
    }
    assert marker.read_text().split() == ["first", "third"]  # the cancelled one never ran
    assert results[first.task_id].ok and results[third.task_id].ok
    skipped = results[second.task_id]
    assert not skipped.ok and skipped.error is not None
    assert skipped.error.code == ErrorCode.TASK_CANCELLED
