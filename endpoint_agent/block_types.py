"""The vocabulary of blocks, shared by `providers` (shape), `blocks` (bookkeeping) and `strategy`.

A *block* is one request to the batch scheduler (one Slurm job, one PBS job, one local process
group...) that starts a manager on each of its `nodes_per_block` nodes. Pure data: no Parsl here,
so the scaling strategy can use it without importing a provider.
"""

from __future__ import annotations

import dataclasses
import enum

__all__ = ["BlockSpec", "BlockState", "EndReason"]


class BlockState(enum.StrEnum):
    """Where a block is in its life, as taskfabric reports it."""

    PENDING = "pending"  # requested; waiting in the scheduler's queue (or held)
    RUNNING = "running"  # the scheduler says it runs (its managers may not have connected yet)
    ENDED = "ended"  # gone for good: see `EndReason`; its managers are lost


class EndReason(enum.StrEnum):
    """Why a block ended."""

    COMPLETED = "completed"  # its command exited 0 (managers drained and exited, or were told to stop)
    WALLTIME = "walltime"  # the scheduler stopped it at its walltime
    CANCELLED = "cancelled"  # cancelled: scaled in by us, or by someone else (e.g. an admin's scancel)
    FAILED = "failed"  # its command failed, its node failed, or it vanished without a trace


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockSpec:
    """The block shape an endpoint's provider is configured with (Parsl's provider parameters)."""

    nodes_per_block: int = 1
    init_blocks: int = 0
    min_blocks: int = 0
    max_blocks: int = 1
    parallelism: float = 1.0
    walltime: str | None = None  # "HH:MM:SS"; None when the provider has no walltime (LocalProvider)
    worker_init: str = ""  # run by the provider's job script before the manager starts

    @property
    def walltime_s(self) -> int | None:
        """The walltime in seconds, or None."""
        if self.walltime is None:
            return None
        hours, minutes, seconds = (int(part) for part in self.walltime.split(":"))
        return hours * 3600 + minutes * 60 + seconds
