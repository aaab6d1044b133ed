"""A task's progress in the store (SQLite and PostgreSQL): the state transitions task starts and
results make (waiting -> running -> success/failed, never back from a finished state, idempotent),
the captured output stored with results, and the same through a real forwarder and broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
from websockets.sync.client import connect

from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.store import Failure, Store
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result, TaskError, TaskEvents, TaskStarted
from taskfabric.testing import wait_until

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]


def _submit(store: Store, endpoint: uuid.UUID, count: int) -> list[uuid.UUID]:
    owner = store.users.create(f"u-{uuid.uuid4().hex[:10]}").user_id
    new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(count)]
    store.tasks.insert(owner_id=owner, endpoint_id=endpoint, client_python="3.11.7", new_tasks=new, created_at=1.0)
    return [task.task_id for task in new]


def _started(task_id: uuid.UUID, at: float, attempt: int = 1) -> TaskStarted:
    return TaskStarted(task_id=task_id, started_at=at, attempt=attempt)


def _ok(task_id: uuid.UUID, **fields: Any) -> Result:
    return Result(task_id=task_id, ok=True, value=b"v", worker_python="3.11.9", **fields)


def test_a_start_moves_a_waiting_task_to_running_then_its_result_finishes_it(store: Store) -> None:
    endpoint = uuid.uuid4()
    task_id, untouched = _submit(store, endpoint, 2)
    store.tasks.mark_started([(endpoint, [_started(task_id, 5.0)])])
    running = store.tasks.get_many([task_id, untouched])
    assert running[task_id].status is TaskStatus.RUNNING
    assert (running[task_id].started_at, running[task_id].attempts) == (5.0, 1)
    assert not running[task_id].finished
    assert running[untouched].status is TaskStatus.WAITING and running[untouched].started_at is None

    finished = store.tasks.store_results([(endpoint, [_ok(task_id, started_at=5.1, attempts=1)])], now=9.0)
    assert [record.task_id for record in finished] == [task_id]
    done = store.tasks.get_many([task_id])[task_id]
    assert done.status is TaskStatus.SUCCESS and done.completed_at == 9.0 and done.finished


def test_a_start_never_moves_a_finished_task_back(store: Store) -> None:
    endpoint = uuid.uuid4()
    succeeded, failed = _submit(store, endpoint, 2)
    store.tasks.store_results([(endpoint, [_ok(succeeded, started_at=3.0, attempts=1)])], now=4.0)
    store.tasks.fail([failed], Failure("DEAD_LETTERED", "gone"), now=4.0)
    # late or replayed starts, even of a later attempt
    store.tasks.mark_started([(endpoint, [_started(succeeded, 6.0, attempt=2), _started(failed, 6.0)])])
    stored = store.tasks.get_many([succeeded, failed])
    assert stored[succeeded].status is TaskStatus.SUCCESS
    assert (stored[succeeded].started_at, stored[succeeded].attempts) == (3.0, 1)
    assert stored[failed].status is TaskStatus.FAILED and stored[failed].started_at is None


def test_repeated_starts_change_nothing_and_a_later_attempt_updates_a_running_task(store: Store) -> None:
    endpoint = uuid.uuid4()
    (task_id,) = _submit(store, endpoint, 1)
    store.tasks.mark_started([(endpoint, [_started(task_id, 5.0)])])
    store.tasks.mark_started([(endpoint, [_started(task_id, 7.0)]), (endpoint, [_started(task_id, 8.0)])])
    first = store.tasks.get_many([task_id])[task_id]
    assert (first.status, first.started_at, first.attempts) == (TaskStatus.RUNNING, 5.0, 1)
    # the worker died; the retry started: the same task, its second attempt
    store.tasks.mark_started([(endpoint, [_started(task_id, 12.0, attempt=2), _started(task_id, 11.0)])])
    second = store.tasks.get_many([task_id])[task_id]
    assert (second.status, second.started_at, second.attempts) == (TaskStatus.RUNNING, 12.0, 2)
    store.tasks.mark_started([(endpoint, [_started(task_id, 13.0, attempt=1)])])  # a stale first start
    assert store.tasks.get_many([task_id])[task_id].attempts == 2


def test_starts_claimed_by_another_endpoint_or_for_unknown_tasks_are_ignored(store: Store) -> None:
    endpoint = uuid.uuid4()
    (task_id,) = _submit(store, endpoint, 1)
    store.tasks.mark_started([(uuid.uuid4(), [_started(task_id, 5.0)]), (endpoint, [_started(uuid.uuid4(), 5.0)])])
    assert store.tasks.get_many([task_id])[task_id].status is TaskStatus.WAITING


def test_output_is_stored_with_the_result_including_a_failure(store: Store) -> None:
    endpoint = uuid.uuid4()
    good, bad, quiet = _submit(store, endpoint, 3)
    failure = Result(
        task_id=bad,
        ok=False,
        error=TaskError(code="TASK_FAILED", message="boom"),
        stdout="before the crash\n",
        stderr="Traceback...\x00\n",
    )
    finished = store.tasks.store_results(
        [(endpoint, [_ok(good, stdout="hello\n", stderr="warning\n"), failure, _ok(quiet)])], now=2.0
    )
    by_id = {record.task_id: record for record in finished}
    assert (by_id[good].stdout, by_id[good].stderr) == ("hello\n", "warning\n")  # what the stream sends
    stored = store.tasks.get_many([good, bad, quiet])
    assert (stored[good].stdout, stored[good].stderr) == ("hello\n", "warning\n")
    assert stored[bad].status is TaskStatus.FAILED
    assert (stored[bad].stdout, stored[bad].stderr) == ("before the crash\n", "Traceback...\ufffd\n")
    assert (stored[quiet].stdout, stored[quiet].stderr) == (None, None)


def test_starts_and_output_through_the_forwarder(forwarder: Any, users: Users, fake_endpoints: FakeEndpoints) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"a", b"b"])
    endpoint = fake_endpoints(registration)
    started_at = time.time()
    events = TaskEvents(started=[_started(uuid.UUID(task_id), started_at, attempt=2) for task_id in task_ids])
    endpoint.publish_message(events)
    wait_until(lambda: alice.task(task_ids[1])["status"] == TaskStatus.RUNNING, what="the tasks running")
    running = alice.tasks(task_ids)["tasks"][task_ids[0]]
    assert running["status"] == TaskStatus.RUNNING
    assert running["details"]["started_at"] == started_at and running["details"]["attempts"] == 2
    assert running["completed_at"] is None and (running["stdout"], running["stderr"]) == ("", "")

    endpoint.publish_results([_ok(uuid.UUID(task_ids[0]), attempts=2, stdout="out\n", stderr="err\n")])
    wait_until(lambda: alice.task(task_ids[0])["status"] == TaskStatus.SUCCESS, what="the result")
    done = alice.task(task_ids[0])
    assert (done["stdout"], done["stderr"]) == ("out\n", "err\n")
    endpoint.publish_message(TaskEvents(started=[_started(uuid.UUID(task_ids[0]), time.time(), attempt=3)]))
    endpoint.publish_results([_ok(uuid.UUID(task_ids[1]))])  # queued behind the late start
    wait_until(lambda: alice.task(task_ids[1])["status"] == TaskStatus.SUCCESS, what="the second result")
    assert alice.task(task_ids[0])["status"] == TaskStatus.SUCCESS  # the late start changed nothing


def test_a_running_task_is_not_replayed_as_a_result_on_the_stream(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("lab")
    endpoint_id = uuid.UUID(registration["endpoint_id"])
    owner = uuid.UUID(alice.http.get("/v1/whoami").json()["user_id"])
    # tasks this forwarder did not accept itself (as if through another replica): a subscription
    # looks them up in the store
    done_id, running_id = uuid.uuid4(), uuid.uuid4()
    with forwarder.store() as store:
        new = [NewTask(task_id=task_id, function_id=uuid.uuid4(), payload=b"") for task_id in (done_id, running_id)]
        store.tasks.insert(owner_id=owner, endpoint_id=endpoint_id, client_python="", new_tasks=new, created_at=1.0)
        store.tasks.mark_started([(endpoint_id, [_started(running_id, 2.0)])])
        store.tasks.store_results([(endpoint_id, [_ok(done_id, stdout="done\n")])], now=3.0)
    assert alice.task(str(running_id))["status"] == TaskStatus.RUNNING

    url = forwarder.url.replace("http://", "ws://") + "/v1/results/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {alice.token}"}, open_timeout=15) as stream:
        stream.send(msgpack.packb({"subscribe": [str(done_id), str(running_id)]}))
        stream.send(msgpack.packb({"ping": 1}))
        frames = []
        while (frame := msgpack.unpackb(stream.recv(timeout=15))) != {"pong": 1}:  # the pong is a barrier
            frames.append(frame)
        assert [[result["task_id"] for result in frame["results"]] for frame in frames] == [[str(done_id)]]
        assert frames[0]["results"][0]["stdout"] == "done\n"
        fake_endpoints(registration).publish_results([_ok(running_id)])
        (result,) = msgpack.unpackb(stream.recv(timeout=15))["results"]
        assert result["task_id"] == str(running_id) and result["ok"]
