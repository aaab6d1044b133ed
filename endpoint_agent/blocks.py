"""Block bookkeeping over a real Parsl provider: submit, poll, cancel, and a snapshot for status.

Block ids are ours (``"<prefix>-<n>"``, strings, unique per agent run: the prefix is random, so a
manager left over from an earlier run never claims a new block's id); each maps to the provider's
job id. `BlockManager.poll` asks the provider for the status of every live block and maps Parsl's
`JobState` onto `BlockState` (pending | running | ended), remembering when and why each block
ended (`EndReason`): completed, walltime, cancelled, failed.

Threading: provider calls block (``sbatch``, ``squeue``, ``scancel`` run as subprocesses, with the
provider's ``cmd_timeout``), so the agent calls `submit_blocks`, `poll` and `cancel` from one
dedicated scaling thread, never from the interchange loop, and never from two threads at once.
`snapshot` may be called from any thread: it only reads the table, under a lock.

Wiring, in the agent's scaling thread (``manager_argv`` and ``activity`` are the agent's)::

    config = load_block_config(endpoint_config, source=str(config_path))
    blocks = BlockManager(build_provider(config.provider, script_dir=run_dir / "submit_scripts"))
    policy = ScalingPolicy.from_config(config.provider.block, config.scaling)

    def command_for(block_id: str) -> str:
        return render_block_command(manager_argv(block_id), rundir=run_dir, container=config.container)

    blocks.submit_blocks(initial_blocks(config.provider.block), command_for)
    while running:                                   # every config.scaling.strategy_period_s
        for change in blocks.poll():                 # an ENDED block's managers are lost
            ...
        views = blocks.snapshot().views(activity)    # activity: {block_id: BlockActivity} from the interchange
        decision = decide(ScalingSnapshot(now=time.time(), tasks_waiting=..., tasks_outstanding=...,
                                          blocks=views), policy)
        blocks.submit_blocks(decision.scale_out, command_for)
        blocks.cancel(decision.scale_in)             # after telling those blocks' managers to drain

This module and `providers` are the only ones that touch Parsl; Parsl's errors become
`ProviderError`/`SubmitFailed` here.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from taskfabric.endpoint_agent.block_types import BlockState, EndReason
from taskfabric.endpoint_agent.strategy import BlockView
from taskfabric.errors import ProviderError, SubmitFailed

__all__ = ["BlockActivity", "BlockChange", "BlockManager", "BlockRecord", "BlocksSnapshot"]

log = logging.getLogger(__name__)

_STATE_OF_JOB: dict[JobState, BlockState] = {
    JobState.PENDING: BlockState.PENDING,
    JobState.HELD: BlockState.PENDING,
    JobState.RUNNING: BlockState.RUNNING,
    JobState.COMPLETED: BlockState.ENDED,
    JobState.CANCELLED: BlockState.ENDED,
    JobState.FAILED: BlockState.ENDED,
    JobState.TIMEOUT: BlockState.ENDED,
    JobState.MISSING: BlockState.ENDED,
    JobState.SCALED_IN: BlockState.ENDED,
}
_END_OF_JOB: dict[JobState, EndReason] = {
    JobState.COMPLETED: EndReason.COMPLETED,
    JobState.CANCELLED: EndReason.CANCELLED,
    JobState.SCALED_IN: EndReason.CANCELLED,
    JobState.FAILED: EndReason.FAILED,
    JobState.MISSING: EndReason.FAILED,
    JobState.TIMEOUT: EndReason.WALLTIME,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockRecord:
    """One block as last seen. Times are the manager's clock (`time.time` by default)."""

    block_id: str
    job_id: str
    state: BlockState
    submitted_at: float
    started_at: float | None = None  # first poll that saw it running
    ended_at: float | None = None  # first poll that saw it ended
    end_reason: EndReason | None = None
    message: str = ""  # what the provider said about the last state (exit code, scheduler message)
    cancel_requested: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class BlockChange:
    """A block moved from one state to another during a poll."""

    block_id: str
    old: BlockState
    new: BlockState
    end_reason: EndReason | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BlockActivity:
    """What the interchange knows of one block's managers, for `BlocksSnapshot.views`."""

    managers: int = 0  # connected managers of the block
    workers: int = 0  # their workers
    outstanding_tasks: int = 0  # tasks handed to them without a result yet
    last_task_done_at: float | None = None  # when one of its tasks last finished (BlockManager's clock)


@dataclasses.dataclass(frozen=True, slots=True)
class BlocksSnapshot:
    """Every block the manager remembers, at `taken_at`, for status reports and the strategy."""

    taken_at: float
    blocks: tuple[BlockRecord, ...]

    def ids_in(self, state: BlockState) -> tuple[str, ...]:
        return tuple(record.block_id for record in self.blocks if record.state == state)

    @property
    def pending(self) -> tuple[str, ...]:
        return self.ids_in(BlockState.PENDING)

    @property
    def running(self) -> tuple[str, ...]:
        return self.ids_in(BlockState.RUNNING)

    @property
    def ended(self) -> tuple[str, ...]:
        return self.ids_in(BlockState.ENDED)

    def get(self, block_id: str) -> BlockRecord | None:
        return next((record for record in self.blocks if record.block_id == block_id), None)

    def views(self, activity: Mapping[str, BlockActivity]) -> tuple[BlockView, ...]:
        """The strategy's view of every block, from this snapshot and the interchange's `activity`.

        A block is idle since it was submitted or since its last task finished, whichever is
        later, and not idle (None) while it has outstanding tasks.
        """
        return tuple(_view(record, activity.get(record.block_id, BlockActivity())) for record in self.blocks)


class BlockManager:
    """Submit, track and cancel blocks through one Parsl `ExecutionProvider`.

    `provider` must have its ``script_dir`` set (`providers.build_provider` does). `label` names
    the scheduler jobs (``<label>.<block id>``). Each block runs one copy of its command per node
    (``tasks_per_node=1``: one manager per node, which starts the workers itself). At most
    `keep_ended` ended blocks are remembered (oldest forgotten first).
    """

    def __init__(
        self,
        provider: ExecutionProvider,
        *,
        label: str = "taskfabric",
        id_prefix: str | None = None,
        keep_ended: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.label = label
        self.id_prefix = id_prefix or secrets.token_hex(3)
        self._keep_ended = keep_ended
        self._clock = clock
        self._lock = threading.Lock()
        self._blocks: dict[str, BlockRecord] = {}
        self._counter = 0

    # --- scaling thread -----------------------------------------------------------------

    def submit_blocks(self, count: int, command_for: Callable[[str], str]) -> list[str]:
        """Submit `count` blocks; `command_for(block_id)` gives each block's command. Returns the new ids.

        Raises `SubmitFailed` (its `submitted` lists the blocks that did go out) when the provider
        refuses one; blocks submitted before that are tracked as usual.
        """
        submitted: list[str] = []
        for _ in range(count):
            block_id = self._next_id()
            try:
                job_id = self._submit_one(block_id, command_for(block_id))
            except SubmitFailed as exc:
                exc.submitted = list(submitted)
                raise
            self._store(
                BlockRecord(block_id=block_id, job_id=job_id, state=BlockState.PENDING, submitted_at=self._clock())
            )
            log.info("submitted block %s as %s job %s", block_id, self._provider_name, job_id)
            submitted.append(block_id)
        return submitted

    def poll(self) -> list[BlockChange]:
        """Ask the provider about every live block; record and return the state changes."""
        live = [record for record in self._records() if record.state != BlockState.ENDED]
        if not live:
            return []
        statuses = self._status([record.job_id for record in live])
        now = self._clock()
        changes = []
        for record, status in zip(live, statuses, strict=True):
            updated = _advance(record, status, now)
            if updated.state != record.state:
                changes.append(BlockChange(record.block_id, record.state, updated.state, updated.end_reason))
                _log_change(updated, record.state)
            self._store(updated)
        self._forget_old_ended()
        return changes

    def cancel(self, block_ids: Iterable[str]) -> list[str]:
        """Ask the provider to cancel these blocks; returns the ids it accepted to cancel.

        Unknown or already ended ids are ignored. A cancelled block is seen as ended (reason
        cancelled) by the next `poll`, however the scheduler reports its end.
        """
        targets = [record for record in self._records() if record.block_id in set(block_ids)]
        targets = [record for record in targets if record.state != BlockState.ENDED]
        if not targets:
            return []
        outcomes = self._cancel([record.job_id for record in targets])
        accepted = []
        for record, ok in zip(targets, outcomes, strict=True):
            self._store(dataclasses.replace(record, cancel_requested=True))
            if ok:
                accepted.append(record.block_id)
            else:
                log.warning(
                    "%s did not confirm cancelling block %s (job %s)",
                    self._provider_name,
                    record.block_id,
                    record.job_id,
                )
        log.info("cancel requested for block(s) %s", ", ".join(record.block_id for record in targets))
        return accepted

    # --- any thread ---------------------------------------------------------------------

    def snapshot(self) -> BlocksSnapshot:
        """Every remembered block as last polled (safe from any thread)."""
        with self._lock:
            return BlocksSnapshot(self._clock(), tuple(self._blocks.values()))

    # --- provider calls (the Parsl boundary) --------------------------------------------

    @property
    def _provider_name(self) -> str:
        return type(self.provider).__name__

    def _submit_one(self, block_id: str, command: str) -> str:
        try:
            job_id = self.provider.submit(command, 1, job_name=f"{self.label}.{block_id}")
        except Exception as exc:  # Parsl's SubmitException, ScriptPathError, a failed subprocess...
            raise SubmitFailed(f"{self._provider_name} could not submit block {block_id}: {_describe(exc)}") from None
        if not job_id:
            raise SubmitFailed(f"{self._provider_name} returned no job id for block {block_id} (at capacity?)")
        return str(job_id)

    def _status(self, job_ids: Sequence[str]) -> Sequence[JobStatus]:
        try:
            statuses = list(self.provider.status(list(job_ids)))
        except Exception as exc:
            raise ProviderError(f"{self._provider_name} could not report job status: {_describe(exc)}") from None
        if len(statuses) != len(job_ids):
            raise ProviderError(f"{self._provider_name} returned {len(statuses)} statuses for {len(job_ids)} jobs")
        return statuses

    def _cancel(self, job_ids: Sequence[str]) -> list[bool]:
        try:
            outcomes = list(self.provider.cancel(list(job_ids)))
        except Exception as exc:
            raise ProviderError(
                f"{self._provider_name} could not cancel jobs {', '.join(job_ids)}: {_describe(exc)}"
            ) from None
        return [bool(ok) for ok in outcomes] + [False] * (len(job_ids) - len(outcomes))

    # --- table --------------------------------------------------------------------------

    def _next_id(self) -> str:
        with self._lock:
            block_id = f"{self.id_prefix}-{self._counter}"
            self._counter += 1
        return block_id

    def _records(self) -> list[BlockRecord]:
        with self._lock:
            return list(self._blocks.values())

    def _store(self, record: BlockRecord) -> None:
        with self._lock:
            self._blocks[record.block_id] = record

    def _forget_old_ended(self) -> None:
        with self._lock:
            ended = [record for record in self._blocks.values() if record.state == BlockState.ENDED]
            ended.sort(key=lambda record: record.ended_at or 0.0)
            for record in ended[: max(0, len(ended) - self._keep_ended)]:
                del self._blocks[record.block_id]


# --- state mapping ------------------------------------------------------------------------


def _advance(record: BlockRecord, status: JobStatus, now: float) -> BlockRecord:
    """`record` updated with what the provider says now."""
    state = _STATE_OF_JOB.get(status.state)
    message = _status_message(status)
    if state is None:  # UNKNOWN: the scheduler did not answer for this job; keep what we knew
        log.debug("block %s: provider state unknown (%s); keeping %s", record.block_id, message, record.state)
        return record
    started_at = now if state == BlockState.RUNNING and record.started_at is None else record.started_at
    if state != BlockState.ENDED:
        return dataclasses.replace(record, state=state, started_at=started_at, message=message)
    reason = EndReason.CANCELLED if record.cancel_requested else _END_OF_JOB.get(status.state, EndReason.FAILED)
    if status.state == JobState.CANCELLED and not record.cancel_requested:
        message = f"{message}, cancelled outside taskfabric"
    return dataclasses.replace(
        record, state=state, started_at=started_at, ended_at=now, end_reason=reason, message=message
    )


def _view(record: BlockRecord, activity: BlockActivity) -> BlockView:
    idle_since = None
    if activity.outstanding_tasks == 0:
        idle_since = max(record.submitted_at, activity.last_task_done_at or record.submitted_at)
    return BlockView(
        block_id=record.block_id,
        state=record.state,
        managers=activity.managers,
        workers=activity.workers,
        outstanding_tasks=activity.outstanding_tasks,
        idle_since=idle_since,
    )


def _status_message(status: JobStatus) -> str:
    parts = [status.state.name]
    if status.exit_code is not None:
        parts.append(f"exit code {status.exit_code}")
    if status.message:
        parts.append(str(status.message))
    return ", ".join(parts)


def _log_change(record: BlockRecord, old: BlockState) -> None:
    if record.state == BlockState.ENDED:
        log.info("block %s (job %s) ended: %s (%s)", record.block_id, record.job_id, record.end_reason, record.message)
    else:
        log.info("block %s (job %s): %s -> %s", record.block_id, record.job_id, old, record.state)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {text}"
