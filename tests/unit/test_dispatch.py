"""Dispatch planning and retry decisions of the interchange (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from taskfabric.endpoint_agent.dispatch import ManagerSlots, plan_dispatch, retry_decision


def slots(name: str, workers: int, prefetch: int = 0, outstanding: int = 0) -> ManagerSlots:
    return ManagerSlots(name.encode(), workers, prefetch, outstanding)


def test_few_tasks_are_spread_over_managers() -> None:
    plan = plan_dispatch([slots("a", 4), slots("b", 4)], 2)
    assert plan == {b"a": 1, b"b": 1}


def test_idle_workers_are_filled_before_prefetch_slots() -> None:
    # a has 2 idle workers; b is busy but has prefetch room: a gets its 2 first
    plan = plan_dispatch([slots("a", 2, prefetch=4), slots("b", 2, prefetch=4, outstanding=2)], 2)
    assert plan == {b"a": 2}


def test_prefetch_slots_take_the_rest() -> None:
    plan = plan_dispatch([slots("a", 2, prefetch=4), slots("b", 2, prefetch=4, outstanding=2)], 100)
    assert plan == {b"a": 6, b"b": 4}


def test_nothing_for_full_managers() -> None:
    assert plan_dispatch([slots("a", 2, prefetch=0, outstanding=2)], 10) == {}
    assert plan_dispatch([], 10) == {}
    assert plan_dispatch([slots("a", 2)], 0) == {}


@given(
    st.lists(st.tuples(st.integers(1, 16), st.integers(0, 16), st.integers(0, 40)), min_size=0, max_size=6),
    st.integers(0, 500),
)
def test_plans_never_exceed_capacity_and_use_it_fully(specs: list[tuple[int, int, int]], waiting: int) -> None:
    managers = [slots(f"m{i}", w, p, o) for i, (w, p, o) in enumerate(specs)]
    plan = plan_dispatch(managers, waiting)
    assert sum(plan.values()) == min(waiting, sum(m.free_slots for m in managers))
    for manager in managers:
        assert plan.get(manager.manager_id, 0) <= manager.free_slots
    # no prefetch slot is used while some manager still has an idle worker left unused
    idle_left = sum(max(0, m.idle_workers - plan.get(m.manager_id, 0)) for m in managers)
    prefetch_used = sum(max(0, plan.get(m.manager_id, 0) - m.idle_workers) for m in managers)
    assert idle_left == 0 or prefetch_used == 0


def test_retry_decision_counts_lost_runs() -> None:
    assert retry_decision(0, 2).retry
    assert retry_decision(1, 2).retry
    final = retry_decision(2, 2)
    assert not final.retry
    assert final.attempts == 3
    assert not retry_decision(0, 0).retry
