"""The interchange with the test playing its managers (`FakeManagerSockets`, no ZeroMQ):
registration, dispatch by capacity, function bodies sent once, unreachable and lost managers."""

from __future__ import annotations

import collections
import uuid

from taskfabric.endpoint_agent.interchange import MAX_REGISTRATION_BYTES, Interchange
from taskfabric.endpoint_agent.ledger import HeldTask
from taskfabric.endpoint_agent.testing import FakeManagerSockets
from taskfabric.errors import ErrorCode
from taskfabric.protocol import (
    Drain,
    FunctionBody,
    ManagerAccepted,
    ManagerRegister,
    Result,
    ResultBatch,
    Task,
    TaskBatch,
)

TOKEN = "registration-token"
FUNCTION = FunctionBody(function_id=uuid.uuid4(), body=b"opaque")


def _interchange() -> tuple[Interchange, FakeManagerSockets]:
    sockets = FakeManagerSockets()
    interchange = Interchange(
        sockets,
        heartbeat_period_s=1.0,
        heartbeat_threshold_s=3.0,
        registration_token=TOKEN,
        function_source=lambda ids: [FUNCTION] if FUNCTION.function_id in ids else [],
    )
    return interchange, sockets


def _register(
    interchange: Interchange, sockets: FakeManagerSockets, manager: bytes, *, workers: int, now: float = 0.0
) -> None:
    sockets.from_manager(
        manager,
        ManagerRegister(manager_id=manager.decode(), hostname="node", workers=workers, registration_token=TOKEN),
    )
    interchange.process_messages(now)


def _waiting(count: int) -> collections.deque[HeldTask]:
    return collections.deque(
        HeldTask(task=Task(task_id=uuid.uuid4(), function_id=FUNCTION.function_id, payload=b"x"), client_python="3.11")
        for _ in range(count)
    )


def _tasks_sent(sockets: FakeManagerSockets, manager: bytes) -> list[uuid.UUID]:
    return [task.task_id for batch in sockets.sent_to(manager, TaskBatch) for task in batch.tasks]


def test_a_manager_with_the_token_is_accepted_and_one_without_is_drained() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"good", workers=2)
    sockets.from_manager(b"bad", ManagerRegister(manager_id="bad", hostname="x", workers=8, registration_token="guess"))
    interchange.process_messages(0.0)
    assert list(interchange.managers) == [b"good"]
    assert sockets.sent_to(b"good", ManagerAccepted)
    (refusal,) = sockets.sent_to(b"bad", Drain)
    assert "wrong registration token" in (refusal.reason or "")


def test_dispatch_fills_idle_workers_across_managers_and_keeps_the_rest_waiting() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"a", workers=1)
    _register(interchange, sockets, b"b", workers=2)
    waiting = _waiting(5)
    order = [held.task_id for held in waiting]

    assert interchange.dispatch(waiting) == 3
    assert len(_tasks_sent(sockets, b"a")) == 1 and len(_tasks_sent(sockets, b"b")) == 2
    assert sorted(_tasks_sent(sockets, b"a") + _tasks_sent(sockets, b"b")) == sorted(order[:3])
    assert [held.task_id for held in waiting] == order[3:]
    assert interchange.summary().outstanding == 3
    assert interchange.dispatch(waiting) == 0  # no free worker left (prefetch 0)


def test_a_function_body_goes_to_each_manager_once() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"a", workers=1)
    waiting = _waiting(2)
    interchange.dispatch(waiting)
    (first,) = sockets.sent_to(b"a", TaskBatch)
    sockets.from_manager(b"a", ResultBatch(results=[Result(task_id=first.tasks[0].task_id, ok=True, value=b"v")]))
    out = interchange.process_messages(0.1)
    assert [held.task_id for held, _result in out.results] == [first.tasks[0].task_id]
    interchange.dispatch(waiting)
    second = sockets.sent_to(b"a", TaskBatch)[1]
    assert [body.function_id for body in first.functions] == [FUNCTION.function_id]
    assert second.functions == []


def test_tasks_for_an_unreachable_manager_stay_waiting_and_it_gets_no_more() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"gone", workers=4)
    sockets.unreachable.add(b"gone")
    waiting = _waiting(2)
    order = [held.task_id for held in waiting]
    assert interchange.dispatch(waiting) == 0
    assert [held.task_id for held in waiting] == order
    assert interchange.managers[b"gone"].draining


def test_a_silent_manager_is_lost_with_its_tasks() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"a", workers=2, now=0.0)
    interchange.dispatch(_waiting(2))
    assert interchange.expire_lost_managers(2.9) == []
    lost = interchange.expire_lost_managers(3.1)
    assert len(lost) == 2 and {item.code for item in lost} == {ErrorCode.MANAGER_LOST}
    assert interchange.managers == {}


def test_an_unregistered_peer_is_refused_for_an_undecodable_or_oversized_first_message() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"good", workers=2)
    sockets.inbox.append((b"garbage", b"\x01\xc1\xc1"))
    sockets.inbox.append((b"huge", b"\x01" + b"\x00" * (MAX_REGISTRATION_BYTES + 1)))
    interchange.process_messages(0.0)
    (garbage,) = sockets.sent_to(b"garbage", Drain)
    assert garbage.reason.startswith("registration refused: not a valid msgpack envelope")
    (huge,) = sockets.sent_to(b"huge", Drain)
    assert f"(at most {MAX_REGISTRATION_BYTES})" in huge.reason
    assert list(interchange.managers) == [b"good"]


def test_a_bad_frame_from_a_registered_manager_is_logged_not_answered_with_a_refusal() -> None:
    interchange, sockets = _interchange()
    _register(interchange, sockets, b"good", workers=2)
    sockets.inbox.append((b"good", b"\x01\xc1\xc1"))
    interchange.process_messages(0.0)
    assert not sockets.sent_to(b"good", Drain)
    assert list(interchange.managers) == [b"good"]
