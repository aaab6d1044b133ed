"""The scaling strategy: how many blocks to add and which to remove, from a snapshot. Pure logic.

Semantics follow Parsl's `jobs/strategy.py` (which Globus Compute endpoints run), adapted to blocks
the agent tracks one by one:

- **Slots.** Each live (pending or running) block brings ``workers_per_node x nodes_per_block``
  slots. Pending blocks count: capacity already requested is not requested again, unless demand
  exceeds what is coming. Blocks the scheduler ended count for nothing (their managers are lost).
- **Active tasks** are the tasks waiting (in the agent and in the broker queue) plus the tasks
  outstanding on managers.
- **Scale out** when ``slots < ceil(active_tasks x parallelism)``, by enough blocks to cover the
  difference; with no slots at all and a task waiting, by at least one block whatever the
  parallelism. Never beyond ``max_blocks`` live blocks; always back up to ``min_blocks``.
- **Scale in** only while no task is waiting: blocks with no outstanding task that have been idle
  longer than ``max_idle_time_s``, longest idle first, never below ``min_blocks``.

`initial_blocks` says how many blocks to start with. The agent calls `decide` every
``strategy_period_s`` from its scaling thread, then submits or cancels through `blocks.BlockManager`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from taskfabric.endpoint_agent.block_types import BlockSpec, BlockState
from taskfabric.protocol.messages import MAX_MANAGER_WORKERS
from taskfabric.settings import setting

__all__ = [
    "BlockView",
    "ScalingDecision",
    "ScalingPolicy",
    "ScalingSettings",
    "ScalingSnapshot",
    "decide",
    "initial_blocks",
]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScalingSettings:
    """The `scaling:` section of an endpoint's config (the block shape is the provider's)."""

    workers_per_node: int = setting(
        1, help="worker processes each manager runs (one manager per node)", min=1, max=MAX_MANAGER_WORKERS
    )
    max_idle_time_s: float = setting(
        120.0, help="seconds a block may sit idle (no task, none waiting) before it is scaled in", min=0
    )
    strategy_period_s: float = setting(5.0, help="seconds between two scaling decisions", min=0.1)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScalingPolicy:
    """The numbers a decision needs besides the snapshot."""

    workers_per_node: int
    nodes_per_block: int = 1
    min_blocks: int = 0
    max_blocks: int = 1
    max_idle_time_s: float = 120.0
    parallelism: float = 1.0

    @classmethod
    def from_config(cls, spec: BlockSpec, settings: ScalingSettings) -> ScalingPolicy:
        """The policy of an endpoint configured with provider block shape `spec` and `settings`."""
        return cls(
            workers_per_node=settings.workers_per_node,
            nodes_per_block=spec.nodes_per_block,
            min_blocks=spec.min_blocks,
            max_blocks=spec.max_blocks,
            max_idle_time_s=settings.max_idle_time_s,
            parallelism=spec.parallelism,
        )

    @property
    def slots_per_block(self) -> int:
        return self.workers_per_node * self.nodes_per_block


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BlockView:
    """What the agent knows about one block at the moment of the snapshot.

    `idle_since` is when the block last had no outstanding task: the agent sets it when it submits
    the block and again whenever the block's last task finishes, and sets it to None while the
    block has tasks. None is never scaled in.
    """

    block_id: str
    state: BlockState
    managers: int = 0
    workers: int = 0
    outstanding_tasks: int = 0
    idle_since: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScalingSnapshot:
    """The agent's state for one decision."""

    now: float
    tasks_waiting: int  # pending in the agent + messages waiting in the broker queue
    tasks_outstanding: int  # handed to managers, no result yet
    blocks: Sequence[BlockView] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ScalingDecision:
    """Blocks to add and blocks to cancel, with why (for the log and the endpoint's status)."""

    scale_out: int
    scale_in: tuple[str, ...]
    reason: str

    @property
    def changes_anything(self) -> bool:
        return self.scale_out > 0 or bool(self.scale_in)


def initial_blocks(spec: BlockSpec) -> int:
    """Blocks to request when the agent starts: `init_blocks`, at least `min_blocks`, at most `max_blocks`."""
    return min(max(spec.init_blocks, spec.min_blocks), spec.max_blocks)


def decide(snapshot: ScalingSnapshot, policy: ScalingPolicy) -> ScalingDecision:
    """How many blocks to add, which to cancel, and why."""
    live = [block for block in snapshot.blocks if block.state != BlockState.ENDED]
    wanted, granted, why = _scale_out(snapshot, policy, live)
    if wanted > 0:  # short of capacity (even if max_blocks forbids more): nothing to scale in
        return ScalingDecision(granted, (), why)
    scale_in, why = _scale_in(snapshot, policy, live)
    return ScalingDecision(0, scale_in, why or _steady(snapshot, policy, live))


# --- scale out ----------------------------------------------------------------------------


def _scale_out(snapshot: ScalingSnapshot, policy: ScalingPolicy, live: list[BlockView]) -> tuple[int, int, str]:
    """(blocks wanted, blocks granted under max_blocks, why)."""
    room = max(0, policy.max_blocks - len(live))
    below_min = max(0, policy.min_blocks - len(live))
    for_demand, demand_why = _blocks_for_demand(snapshot, policy, len(live))
    wanted = max(below_min, for_demand)
    if wanted == 0:
        return 0, 0, ""
    granted = min(wanted, room)
    reasons = []
    if below_min:
        reasons.append(f"{len(live)} live block(s) is below min_blocks={policy.min_blocks}")
    if for_demand:
        reasons.append(demand_why)
    if granted < wanted:
        reasons.append(f"capped by max_blocks={policy.max_blocks} ({len(live)} live)")
    verb = f"scale out by {granted} block(s)" if granted else "cannot scale out"
    return wanted, granted, f"{verb}: " + "; ".join(reasons)


def _blocks_for_demand(snapshot: ScalingSnapshot, policy: ScalingPolicy, live: int) -> tuple[int, str]:
    slots = live * policy.slots_per_block
    active = snapshot.tasks_waiting + snapshot.tasks_outstanding
    needed = math.ceil(active * policy.parallelism)
    load = (
        f"{active} active task(s) ({snapshot.tasks_waiting} waiting, {snapshot.tasks_outstanding} outstanding) "
        f"at parallelism {policy.parallelism:g} need {needed} slot(s), {live} live block(s) give {slots}"
    )
    if slots == 0 and snapshot.tasks_waiting > 0:
        return max(1, _ceil_div(needed, policy.slots_per_block)), load
    if needed > slots:
        return _ceil_div(needed - slots, policy.slots_per_block), load
    return 0, load


# --- scale in -----------------------------------------------------------------------------


def _scale_in(snapshot: ScalingSnapshot, policy: ScalingPolicy, live: list[BlockView]) -> tuple[tuple[str, ...], str]:
    if snapshot.tasks_waiting > 0:
        return (), ""
    idle = sorted(
        (block for block in live if _idle_too_long(block, snapshot.now, policy.max_idle_time_s)),
        key=lambda block: (block.idle_since, block.state != BlockState.PENDING, block.block_id),
    )
    removable = max(0, len(live) - policy.min_blocks)
    chosen = tuple(block.block_id for block in idle[:removable])
    if not chosen:
        return (), ""
    kept = f", keeping min_blocks={policy.min_blocks}" if len(idle) > len(chosen) else ""
    return chosen, (
        f"scale in {len(chosen)} block(s) idle for more than max_idle_time_s={policy.max_idle_time_s:g} "
        f"with no task waiting{kept}: {', '.join(chosen)}"
    )


def _idle_too_long(block: BlockView, now: float, max_idle_time_s: float) -> bool:
    if block.outstanding_tasks > 0 or block.idle_since is None:
        return False
    return now - block.idle_since > max_idle_time_s


# --- helpers ------------------------------------------------------------------------------


def _steady(snapshot: ScalingSnapshot, policy: ScalingPolicy, live: list[BlockView]) -> str:
    pending = sum(1 for block in live if block.state == BlockState.PENDING)
    return (
        f"steady: {len(live)} live block(s) ({pending} pending) x {policy.slots_per_block} slot(s) for "
        f"{snapshot.tasks_waiting} waiting and {snapshot.tasks_outstanding} outstanding task(s)"
    )


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
