"""Grouping tasks into broker messages by count and bytes; the function body cache."""

from __future__ import annotations

import uuid

import pytest

from taskfabric.forwarder.batching import TASK_OVERHEAD_BYTES, FunctionBodyCache, plan_task_batches
from taskfabric.forwarder.records import NewTask
from taskfabric.protocol import FunctionBody, TaskBatch, pack, unpack_as

F, G = uuid.uuid4(), uuid.uuid4()
BODIES = {
    F: FunctionBody(function_id=F, body=b"f" * 100, python_version="3.11.7"),
    G: FunctionBody(function_id=G, body=b"g" * 10),
}


def _tasks(count: int, function_id: uuid.UUID = F, payload: bytes = b"p") -> list[NewTask]:
    return [NewTask(task_id=uuid.uuid4(), function_id=function_id, payload=payload) for _ in range(count)]


def test_tasks_are_split_by_count_in_order() -> None:
    tasks = _tasks(1000)
    batches = plan_task_batches(tasks, BODIES, max_tasks=256, max_bytes=10**9, client_python="3.11.7", submitted_at=5.0)
    assert [len(batch.tasks) for batch in batches] == [256, 256, 256, 232]
    assert [task.task_id for batch in batches for task in batch.tasks] == [task.task_id for task in tasks]
    for batch in batches:
        assert batch.functions == [BODIES[F]]
        assert batch.client_python == "3.11.7"
        assert {task.submitted_at for task in batch.tasks} == {5.0}
        assert unpack_as(pack(batch), TaskBatch) == batch  # valid on the wire (bodies for every task)


def test_tasks_are_split_by_bytes_and_a_big_task_travels_alone() -> None:
    payload = b"x" * 1000
    tasks = _tasks(10, payload=payload)
    per_task = len(payload) + TASK_OVERHEAD_BYTES
    limit = 100 + 3 * per_task  # the body and three tasks fit
    batches = plan_task_batches(tasks, BODIES, max_tasks=1000, max_bytes=limit)
    assert [len(batch.tasks) for batch in batches] == [3, 3, 3, 1]
    big = _tasks(1, payload=b"y" * 5000)
    alone = plan_task_batches(_tasks(1) + big + _tasks(1), BODIES, max_tasks=1000, max_bytes=1000)
    assert [len(batch.tasks) for batch in alone] == [1, 1, 1]
    assert alone[1].tasks[0].payload == b"y" * 5000


def test_each_message_carries_only_its_functions_bodies() -> None:
    tasks = _tasks(2, F) + _tasks(2, G) + _tasks(1, F)
    batches = plan_task_batches(tasks, BODIES, max_tasks=3, max_bytes=10**9)
    assert [[t.function_id for t in batch.tasks] for batch in batches] == [[F, F, G], [G, F]]
    assert [[body.function_id for body in batch.functions] for batch in batches] == [[F, G], [G, F]]
    for batch in batches:  # every task's body rides in its own message
        assert {task.function_id for task in batch.tasks} <= {body.function_id for body in batch.functions}


def test_walltime_travels_with_the_task() -> None:
    task = NewTask(task_id=uuid.uuid4(), function_id=F, payload=b"p", walltime_s=12.5)
    (batch,) = plan_task_batches([task], BODIES, max_tasks=10, max_bytes=10**6)
    assert batch.tasks[0].walltime_s == 12.5


def test_every_task_names_its_submitter_on_the_wire() -> None:
    batches = plan_task_batches(_tasks(5), BODIES, max_tasks=2, max_bytes=10**6, user="bob")
    assert {task.user for batch in batches for task in batch.tasks} == {"bob"}
    assert unpack_as(pack(batches[0]), TaskBatch).tasks[0].user == "bob"


def test_no_tasks_no_messages() -> None:
    assert plan_task_batches([], BODIES, max_tasks=10, max_bytes=10) == []


def test_body_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = FunctionBodyCache(max_bytes=250)
    bodies = [FunctionBody(function_id=uuid.uuid4(), body=bytes([i]) * 100) for i in range(3)]
    cache.put(bodies[0])
    cache.put(bodies[1])
    assert cache.get_many([bodies[0].function_id]) == {bodies[0].function_id: bodies[0]}  # 0 is now the newest
    cache.put(bodies[2])  # 300 bytes > 250: the least recently used (1) goes
    assert bodies[1].function_id not in cache
    assert bodies[0].function_id in cache and bodies[2].function_id in cache
    assert cache.size_bytes == 200
    cache.put(FunctionBody(function_id=uuid.uuid4(), body=b"z" * 1000))  # bigger than the cache: not kept
    assert len(cache) == 2
    cache.discard(bodies[0].function_id)
    assert cache.size_bytes == 100
    cache.put(bodies[2])  # again: no double counting
    assert cache.size_bytes == 100


@pytest.mark.parametrize("max_bytes", [0, 1])
def test_a_tiny_cache_caches_nothing(max_bytes: int) -> None:
    cache = FunctionBodyCache(max_bytes=max_bytes)
    cache.put(BODIES[F])
    assert cache.get_many([F]) == {}
