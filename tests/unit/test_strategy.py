"""The scaling strategy: pure decisions from snapshots, no network, no clock."""

from __future__ import annotations

import pytest

from taskfabric.endpoint_agent.block_types import BlockSpec, BlockState
from taskfabric.endpoint_agent.strategy import (
    BlockView,
    ScalingDecision,
    ScalingPolicy,
    ScalingSettings,
    ScalingSnapshot,
    decide,
    initial_blocks,
)

PENDING, RUNNING, ENDED = BlockState.PENDING, BlockState.RUNNING, BlockState.ENDED


def policy(**overrides: float) -> ScalingPolicy:
    values = {
        "workers_per_node": 4,
        "nodes_per_block": 1,
        "min_blocks": 0,
        "max_blocks": 4,
        "max_idle_time_s": 60.0,
        "parallelism": 1.0,
    }
    values.update(overrides)
    return ScalingPolicy(**values)  # type: ignore[arg-type]


def block(
    block_id: str, state: BlockState = RUNNING, *, outstanding: int = 0, idle_since: float | None = None
) -> BlockView:
    return BlockView(
        block_id=block_id,
        state=state,
        managers=1 if state == RUNNING else 0,
        workers=4 if state == RUNNING else 0,
        outstanding_tasks=outstanding,
        idle_since=idle_since,
    )


def snap(
    now: float = 1000.0, waiting: int = 0, outstanding: int = 0, blocks: tuple[BlockView, ...] = ()
) -> ScalingSnapshot:
    return ScalingSnapshot(now=now, tasks_waiting=waiting, tasks_outstanding=outstanding, blocks=blocks)


# --- start-up -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "low", "high", "expected"),
    [(0, 0, 2, 0), (1, 0, 2, 1), (0, 1, 2, 1), (5, 0, 2, 2), (1, 3, 4, 3)],
)
def test_initial_blocks_is_init_blocks_within_min_and_max(init: int, low: int, high: int, expected: int) -> None:
    assert initial_blocks(BlockSpec(init_blocks=init, min_blocks=low, max_blocks=high)) == expected


def test_policy_from_config_takes_the_shape_from_the_provider_and_the_rest_from_scaling() -> None:
    spec = BlockSpec(nodes_per_block=2, min_blocks=1, max_blocks=3, parallelism=0.5)
    made = ScalingPolicy.from_config(spec, ScalingSettings(workers_per_node=8, max_idle_time_s=30))
    assert made == ScalingPolicy(
        workers_per_node=8, nodes_per_block=2, min_blocks=1, max_blocks=3, max_idle_time_s=30, parallelism=0.5
    )
    assert made.slots_per_block == 16


# --- scale out ----------------------------------------------------------------------------


def test_nothing_to_do_without_tasks_or_blocks() -> None:
    decision = decide(snap(), policy())
    assert decision == ScalingDecision(0, (), decision.reason)
    assert not decision.changes_anything
    assert decision.reason.startswith("steady")


def test_one_waiting_task_and_no_capacity_adds_one_block() -> None:
    decision = decide(snap(waiting=1), policy())
    assert decision.scale_out == 1
    assert decision.scale_in == ()
    assert "1 active task" in decision.reason


def test_zero_capacity_adds_a_block_even_at_parallelism_zero() -> None:
    assert decide(snap(waiting=100), policy(parallelism=0.0)).scale_out == 1


def test_parallelism_zero_adds_nothing_once_there_is_capacity() -> None:
    assert decide(snap(waiting=100, blocks=(block("a"),)), policy(parallelism=0.0)).scale_out == 0


def test_scale_out_covers_the_shortfall_in_whole_blocks() -> None:
    # 10 tasks, 4 slots per block -> 3 blocks
    assert decide(snap(waiting=10), policy()).scale_out == 3


def test_scale_out_is_capped_by_max_blocks_and_says_so() -> None:
    decision = decide(snap(waiting=1000), policy(max_blocks=4))
    assert decision.scale_out == 4
    assert "capped by max_blocks=4" in decision.reason


def test_at_max_blocks_nothing_is_added_and_nothing_scaled_in() -> None:
    blocks = (block("a", outstanding=4), block("b", idle_since=0.0))
    decision = decide(snap(waiting=50, outstanding=4, blocks=blocks), policy(max_blocks=2))
    assert decision == ScalingDecision(0, (), decision.reason)
    assert decision.reason.startswith("cannot scale out")


def test_pending_blocks_count_against_max_blocks() -> None:
    blocks = (block("a", PENDING, idle_since=990.0), block("b", PENDING, idle_since=990.0))
    assert decide(snap(waiting=1000, blocks=blocks), policy(max_blocks=3)).scale_out == 1


def test_pending_capacity_is_not_requested_again() -> None:
    # 8 waiting tasks, two pending blocks of 4 slots are on their way: nothing more to ask for
    blocks = (block("a", PENDING, idle_since=990.0), block("b", PENDING, idle_since=990.0))
    assert decide(snap(waiting=8, blocks=blocks), policy()).scale_out == 0


def test_demand_beyond_what_is_pending_asks_for_the_difference() -> None:
    blocks = (block("a", PENDING, idle_since=990.0),)
    assert decide(snap(waiting=12, blocks=blocks), policy()).scale_out == 2


def test_outstanding_tasks_count_as_demand() -> None:
    blocks = (block("a", outstanding=4),)
    assert decide(snap(waiting=4, outstanding=4, blocks=blocks), policy()).scale_out == 1


def test_parallelism_scales_the_slots_wanted() -> None:
    # 16 tasks at parallelism 0.5 want 8 slots: 2 blocks
    assert decide(snap(waiting=16), policy(parallelism=0.5)).scale_out == 2


def test_nodes_per_block_multiplies_slots() -> None:
    # 2 nodes x 4 workers = 8 slots per block; 16 tasks -> 2 blocks
    assert decide(snap(waiting=16), policy(nodes_per_block=2)).scale_out == 2


def test_ended_blocks_are_not_capacity() -> None:
    blocks = (block("old", ENDED), block("older", ENDED))
    decision = decide(snap(waiting=4, blocks=blocks), policy(max_blocks=2))
    assert decision.scale_out == 1
    assert "0 live block(s) give 0" in decision.reason


def test_ended_blocks_below_min_blocks_are_replaced_without_demand() -> None:
    blocks = (block("a", idle_since=0.0), block("gone", ENDED))
    decision = decide(snap(blocks=blocks), policy(min_blocks=2))
    assert decision.scale_out == 1
    assert "below min_blocks=2" in decision.reason


# --- scale in -----------------------------------------------------------------------------


def test_an_idle_block_is_kept_until_max_idle_time_has_passed() -> None:
    blocks = (block("a", idle_since=950.0),)
    assert decide(snap(now=1000.0, blocks=blocks), policy(max_idle_time_s=60)).scale_in == ()
    assert decide(snap(now=1010.0, blocks=blocks), policy(max_idle_time_s=60)).scale_in == ()
    assert decide(snap(now=1011.0, blocks=blocks), policy(max_idle_time_s=60)).scale_in == ("a",)


def test_scale_in_never_goes_below_min_blocks_and_prefers_the_longest_idle() -> None:
    blocks = (block("recent", idle_since=800.0), block("oldest", idle_since=100.0), block("middle", idle_since=500.0))
    decision = decide(snap(now=1000.0, blocks=blocks), policy(min_blocks=1, max_idle_time_s=60))
    assert decision.scale_in == ("oldest", "middle")
    assert "keeping min_blocks=1" in decision.reason


def test_a_block_with_outstanding_tasks_is_never_scaled_in() -> None:
    blocks = (block("busy", outstanding=1, idle_since=0.0), block("idle", idle_since=0.0))
    decision = decide(snap(now=1000.0, outstanding=1, blocks=blocks), policy(max_idle_time_s=60))
    assert decision.scale_in == ("idle",)


def test_a_busy_block_without_idle_time_is_never_scaled_in() -> None:
    blocks = (block("busy", idle_since=None),)
    assert decide(snap(now=10_000.0, blocks=blocks), policy(max_idle_time_s=1)).scale_in == ()


def test_nothing_is_scaled_in_while_tasks_wait() -> None:
    blocks = (block("a", idle_since=0.0), block("b", idle_since=0.0))
    decision = decide(snap(now=1000.0, waiting=1, blocks=blocks), policy(max_idle_time_s=60))
    assert decision.scale_in == ()
    assert decision.scale_out == 0


def test_an_idle_pending_block_is_cancelled_when_no_task_needs_it() -> None:
    blocks = (block("queued", PENDING, idle_since=100.0), block("running", idle_since=100.0))
    decision = decide(snap(now=1000.0, blocks=blocks), policy(min_blocks=1, max_idle_time_s=60))
    assert decision.scale_in == ("queued",)  # same idle time: the pending block goes first


def test_ended_blocks_are_never_scaled_in() -> None:
    blocks = (block("gone", ENDED, idle_since=0.0),)
    assert decide(snap(now=1000.0, blocks=blocks), policy()).scale_in == ()


# --- a whole burst ------------------------------------------------------------------------


class FakeEndpoint:
    """Just enough of an agent to replay a burst: applies decisions, starts pending blocks, runs tasks."""

    def __init__(self, policy: ScalingPolicy) -> None:
        self.policy = policy
        self.now = 0.0
        self.waiting = 0
        self.blocks: dict[str, BlockView] = {}
        self.counter = 0

    def apply(self, decision: ScalingDecision) -> None:
        for _ in range(decision.scale_out):
            self.counter += 1
            self.blocks[f"b{self.counter}"] = block(f"b{self.counter}", PENDING, idle_since=self.now)
        for block_id in decision.scale_in:
            self.blocks[block_id] = block(block_id, ENDED)

    def start_pending(self) -> None:
        for block_id, view in self.blocks.items():
            if view.state == PENDING:
                self.blocks[block_id] = block(block_id, RUNNING, idle_since=self.now)

    def dispatch_all(self) -> None:
        """Hand every waiting task to running blocks (4 slots each); they are outstanding now."""
        for block_id, view in self.blocks.items():
            if view.state == RUNNING and self.waiting:
                taken = min(4, self.waiting)
                self.waiting -= taken
                self.blocks[block_id] = block(block_id, RUNNING, outstanding=taken)

    def finish_all(self) -> None:
        for block_id, view in self.blocks.items():
            if view.state == RUNNING:
                self.blocks[block_id] = block(block_id, RUNNING, idle_since=self.now)

    def step(self, seconds: float) -> ScalingDecision:
        self.now += seconds
        outstanding = sum(view.outstanding_tasks for view in self.blocks.values())
        decision = decide(
            ScalingSnapshot(
                now=self.now,
                tasks_waiting=self.waiting,
                tasks_outstanding=outstanding,
                blocks=tuple(self.blocks.values()),
            ),
            self.policy,
        )
        self.apply(decision)
        return decision

    def live(self) -> int:
        return sum(1 for view in self.blocks.values() if view.state != ENDED)


def test_a_burst_scales_from_min_to_max_and_back_to_min() -> None:
    endpoint = FakeEndpoint(policy(min_blocks=1, max_blocks=3, max_idle_time_s=60))
    assert endpoint.step(1).scale_out == 1  # min_blocks at start
    endpoint.start_pending()
    assert endpoint.step(1).scale_out == 0
    assert endpoint.live() == 1

    endpoint.waiting = 100  # the burst
    assert endpoint.step(1).scale_out == 2  # capped at max_blocks=3
    assert endpoint.step(1).scale_out == 0  # still pending: not requested again
    assert endpoint.live() == 3
    endpoint.start_pending()
    endpoint.dispatch_all()  # 12 running, 88 waiting
    assert endpoint.step(1).scale_out == 0
    assert endpoint.live() == 3

    endpoint.waiting = 0
    endpoint.finish_all()  # the burst is over: all idle from now
    assert endpoint.step(30).scale_in == ()
    assert endpoint.step(30).scale_in == ()  # exactly max_idle_time: not yet
    decision = endpoint.step(1)
    assert len(decision.scale_in) == 2  # back to min_blocks
    assert endpoint.live() == 1
    assert endpoint.step(1000).scale_in == ()  # and never below


def test_a_burst_from_zero_goes_back_to_zero() -> None:
    endpoint = FakeEndpoint(policy(min_blocks=0, max_blocks=2, max_idle_time_s=10))
    assert endpoint.step(1).scale_out == 0
    endpoint.waiting = 5
    assert endpoint.step(1).scale_out == 2
    endpoint.start_pending()
    endpoint.dispatch_all()
    endpoint.finish_all()
    assert endpoint.step(5).changes_anything is False
    assert endpoint.step(6).scale_in == ("b1", "b2")
    assert endpoint.live() == 0
