"""Dead letters through a real forwarder, broker and store: every one is kept in the store (and the
task failed as before), inspectable and re-queueable with `taskfabric admin dead-letters`; a dead
letter whose outcome the agent reports itself leaves that outcome to the agent's result."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from taskfabric.errors import ErrorCode, TaskfabricError
from taskfabric.forwarder import admin
from taskfabric.forwarder.records import DeadLetterRecord, TaskStatus
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.store.schema import dead_letters
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi
from taskfabric.protocol import Result, Task, TaskBatch, TaskError, pack, unpack
from taskfabric.testing import wait_until
from taskfabric.transport import Delivery, OutgoingMessage, RabbitTransport

Users = Callable[[Any], ForwarderApi]
FakeEndpoints = Callable[..., FakeEndpoint]

TASKFABRIC = str(Path(sys.executable).parent / "taskfabric")


def _kept_rows(forwarder: Any, task_ids: list[str]) -> list[Any]:
    wanted = [uuid.UUID(task_id) for task_id in task_ids]
    with forwarder.store() as store, store.engine.connect() as connection:
        return list(connection.execute(select(dead_letters).where(dead_letters.c.task_id.in_(wanted))))


def test_a_dead_lettered_task_batch_is_kept_per_task_and_still_fails_its_tasks(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("refuses")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"x", b"y"])
    endpoint = fake_endpoints(registration)
    endpoint.transport.consume(
        registration["broker"]["task_queue"], lambda d: endpoint.transport.nack(d, requeue=False), prefetch=1
    )
    wait_until(lambda: all(alice.task(t)["status"] == "failed" for t in task_ids), what="tasks failed")
    assert {alice.task(t)["error"]["code"] for t in task_ids} == {ErrorCode.DEAD_LETTERED.value}

    rows = wait_until(lambda: len(r := _kept_rows(forwarder, task_ids)) == 2 and r, what="two kept dead letters")
    owner = uuid.UUID(alice.http.get("/v1/whoami").json()["user_id"])
    for row in rows:
        assert row.endpoint_id == uuid.UUID(registration["endpoint_id"])
        assert row.owner_id == owner
        assert "rejected" in row.reason
        assert row.queue == registration["broker"]["task_queue"]
        kept = unpack(row.body)
        assert isinstance(kept, TaskBatch)
        assert [task.task_id for task in kept.tasks] == [row.task_id]  # one task per entry, with its body
        assert [body.function_id for body in kept.functions] == [uuid.UUID(function_id)]

    listed = {entry.task_id: entry for entry in admin.list_dead_letters(forwarder.settings, limit=10_000)}
    entry = listed[uuid.UUID(task_ids[0])]
    shown = admin.show_dead_letter(forwarder.settings, str(entry.dead_letter_id))
    assert shown.record.task_id == uuid.UUID(task_ids[0])
    assert shown.summary["kind"] == "task_batch"
    assert shown.summary["tasks"][0]["task_id"] == task_ids[0]
    assert shown.task_status == TaskStatus.FAILED
    with pytest.raises(TaskfabricError, match="finished"):  # the task failed: nothing to re-queue
        admin.requeue_dead_letter(forwarder.settings, str(entry.dead_letter_id))
    log = forwarder.process.log_file.read_text(errors="replace")
    assert task_ids[0] in log and task_ids[1] in log  # the log names the tasks


def _agent_dead_letter(endpoint: FakeEndpoint, registration: dict[str, Any], task: Task) -> None:
    """What an agent publishes when it gives up on a task whose error result it reports itself."""
    endpoint.transport.publish(
        OutgoingMessage(
            exchange=registration["broker"]["dead_letter_exchange"],
            routing_key=registration["broker"]["task_queue"],
            body=pack(TaskBatch(tasks=[task])),
            message_id=str(task.task_id),
            user_id=endpoint.username,
            headers={
                "x-first-death-reason": "retries_exhausted",
                "x-first-death-queue": registration["broker"]["task_queue"],
                "x-taskfabric-reason": "worker killed by signal 9; gave up after 3 lost runs",
                "x-taskfabric-outcome-reported": True,
            },
        )
    ).result(timeout=15)


def test_a_dead_letter_whose_outcome_the_agent_reports_leaves_the_task_to_that_result(
    forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, rabbit: RabbitTransport
) -> None:
    alice = users(forwarder)
    registration = alice.register_endpoint("crashes")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    (task_id,) = alice.submit(registration["endpoint_id"], function_id, [b"boom"])
    endpoint = fake_endpoints(registration)
    task = Task(task_id=uuid.UUID(task_id), function_id=uuid.UUID(function_id), payload=b"boom")

    _agent_dead_letter(endpoint, registration, task)  # before the error result, as the agent does
    dead_letter_queue = f"{forwarder.settings.topology_prefix}.dead-letters"
    wait_until(lambda: rabbit.queue_depth(dead_letter_queue) == 0, what="the dead letter consumed")
    assert alice.task(task_id)["status"] == "waiting"  # not DEAD_LETTERED: the agent's result decides
    (row,) = wait_until(lambda: _kept_rows(forwarder, [task_id]), what="the dead letter kept")
    assert "signal 9" in row.reason

    # still waiting: an operator may re-queue it; the task message reaches the endpoint's queue
    requeued: list[Delivery] = []
    endpoint.transport.consume(
        registration["broker"]["task_queue"],
        lambda d: (requeued.append(d), endpoint.transport.ack(d)),
        prefetch=10,
    )
    wait_until(lambda: len(requeued) == 1, what="the submitted task message")
    assert admin.requeue_dead_letter(forwarder.settings, str(row.dead_letter_id)) == uuid.UUID(task_id)
    wait_until(lambda: len(requeued) == 2, what="the re-queued task message")
    again = unpack(requeued[1].body)
    assert isinstance(again, TaskBatch) and [t.task_id for t in again.tasks] == [uuid.UUID(task_id)]
    assert not _kept_rows(forwarder, [task_id])  # re-queued: no longer a dead letter

    error = TaskError(
        code=ErrorCode.WORKER_LOST, message="the worker was killed by signal 9; gave up after 3 lost runs"
    )
    endpoint.publish_results([Result(task_id=task.task_id, ok=False, error=error, attempts=3)])
    wait_until(lambda: alice.task(task_id)["status"] == "failed", what="the agent's error result")
    stored = alice.task(task_id)["error"]
    assert stored["code"] == ErrorCode.WORKER_LOST.value and "signal 9" in stored["message"]


def test_dead_letters_are_listed_shown_and_purged_from_the_command_line(
    sqlite_forwarder: Any, users: Users, fake_endpoints: FakeEndpoints, tmp_path: Path
) -> None:
    forwarder = sqlite_forwarder
    alice = users(forwarder)
    registration = alice.register_endpoint("cli")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"a", b"b", b"c"])
    endpoint = fake_endpoints(registration)
    for task_id in task_ids:
        task = Task(task_id=uuid.UUID(task_id), function_id=uuid.uuid4(), payload=b"")
        _agent_dead_letter(endpoint, registration, task)
    wait_until(lambda: len(_kept_rows(forwarder, task_ids)) == 3, what="three kept dead letters")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [TASKFABRIC, "admin", "dead-letters", *args, "--database-url", forwarder.settings.database_url]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    listed = run("list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = {entry["task_id"]: entry for entry in json.loads(listed.stdout)["dead_letters"]}
    assert set(task_ids) <= set(entries)
    first = entries[task_ids[0]]
    assert first["endpoint_id"] == registration["endpoint_id"] and "signal 9" in first["reason"]

    shown = run("show", first["dead_letter_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["task_id"] == task_ids[0] and document["task_status"] == "waiting"
    assert document["message"]["kind"] == "task_batch"
    missing = run("show", str(uuid.uuid4()))
    assert missing.returncode != 0 and "no dead letter" in missing.stderr
    assert run("show", "not-an-id").returncode != 0

    cutoff = max(entry["created_at"] for entry in entries.values()) + 1
    purged = run("purge", "--before", str(cutoff))
    assert purged.returncode == 0, purged.stderr
    assert not _kept_rows(forwarder, task_ids)
    remaining = json.loads(run("list", "--json").stdout)["dead_letters"]
    assert not {entry["task_id"] for entry in remaining} & set(task_ids)
    assert run("purge").returncode == 0  # without --before: every kept entry
    assert json.loads(run("list", "--json").stdout)["dead_letters"] == []


def test_the_dead_letter_table_lists_newest_first_and_purges_by_age(store: Store) -> None:
    def kept(created_at: float, task_id: uuid.UUID | None) -> DeadLetterRecord:
        return DeadLetterRecord(
            dead_letter_id=uuid.uuid4(),
            task_id=task_id,
            endpoint_id=uuid.uuid4(),
            owner_id=uuid.uuid4(),
            reason="rejected",
            deliveries=3,
            queue="tasks.q",
            created_at=created_at,
            body=b"\x00body",
        )

    records = [kept(100.0, uuid.uuid4()), kept(300.0, None), kept(200.0, uuid.uuid4())]
    store.dead_letters.add(records)
    mine = {record.dead_letter_id for record in records}

    def listed() -> list[DeadLetterRecord]:  # the PostgreSQL store is shared with other tests
        return [record for record in store.dead_letters.list(limit=100_000) if record.dead_letter_id in mine]

    assert [record.created_at for record in listed()] == [300.0, 200.0, 100.0]
    assert all(record.body is None for record in listed())  # listings leave bodies out
    assert store.dead_letters.get(records[0].dead_letter_id) == records[0]
    assert store.dead_letters.list(task_id=records[2].task_id) == [dataclasses.replace(records[2], body=None)]
    assert store.dead_letters.get(uuid.uuid4()) is None
    assert store.dead_letters.purge(before=250.0) == 2
    assert [record.dead_letter_id for record in listed()] == [records[1].dead_letter_id]
    assert store.dead_letters.delete(records[1].dead_letter_id)
    assert not store.dead_letters.delete(records[1].dead_letter_id)
    assert listed() == []
