"""BlockManager's bookkeeping over a scripted provider: state mapping, end reasons, errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider
from parsl.providers.errors import SubmitException

from taskfabric.endpoint_agent.block_types import BlockState, EndReason
from taskfabric.endpoint_agent.blocks import BlockActivity, BlockChange, BlockManager
from taskfabric.endpoint_agent.strategy import BlockView
from taskfabric.errors import ProviderError, SubmitFailed


class ScriptedProvider(ExecutionProvider):
    """A provider whose jobs are in whatever state the test sets (the real ones are in integration tests)."""

    def __init__(self) -> None:
        self.min_blocks, self.max_blocks, self.init_blocks, self.nodes_per_block = 0, 10, 0, 1
        self.parallelism = 1.0
        self.script_dir = "/nonexistent"
        self.resources = {}
        self.states: dict[str, JobStatus] = {}
        self.submitted: list[tuple[str, int, str]] = []
        self.cancelled: list[str] = []
        self.fail_submit_after: int | None = None
        self.fail_status = False
        self.refuse_cancel = False
        self.job_ids: list[object] = []

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.auto") -> object:
        if self.fail_submit_after is not None and len(self.submitted) >= self.fail_submit_after:
            raise SubmitException(job_name, "sbatch: error: Batch job submission failed: Invalid account")
        self.submitted.append((command, tasks_per_node, job_name))
        job_id = self.job_ids.pop(0) if self.job_ids else str(100 + len(self.submitted))
        if job_id:
            self.states[str(job_id)] = JobStatus(JobState.PENDING)
        return job_id

    def status(self, job_ids: Sequence[object]) -> Sequence[JobStatus]:
        if self.fail_status:
            raise OSError("squeue: error: slurm_load_jobs error: Unable to contact slurm controller")
        return [self.states[str(job_id)] for job_id in job_ids]

    def cancel(self, job_ids: Sequence[object]) -> Sequence[bool]:
        self.cancelled.extend(str(job_id) for job_id in job_ids)
        return [not self.refuse_cancel for _ in job_ids]

    @property
    def label(self) -> str:
        return "scripted"

    @property
    def status_polling_interval(self) -> int:
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(provider: ScriptedProvider, clock: Clock) -> BlockManager:
    return BlockManager(provider, label="tf", id_prefix="ep", clock=clock)


def set_state(
    provider: ScriptedProvider, manager: BlockManager, block_id: str, state: JobState, **extra: object
) -> None:
    record = manager.snapshot().get(block_id)
    assert record is not None
    provider.states[record.job_id] = JobStatus(state, **extra)  # type: ignore[arg-type]


def test_submitted_blocks_get_our_ids_and_their_own_commands(provider: ScriptedProvider, manager: BlockManager) -> None:
    ids = manager.submit_blocks(2, lambda block_id: f"manager --block-id {block_id}")
    assert ids == ["ep-0", "ep-1"]
    assert provider.submitted == [
        ("manager --block-id ep-0", 1, "tf.ep-0"),
        ("manager --block-id ep-1", 1, "tf.ep-1"),
    ]
    snapshot = manager.snapshot()
    assert snapshot.pending == ("ep-0", "ep-1")
    assert snapshot.running == snapshot.ended == ()
    assert [record.job_id for record in snapshot.blocks] == ["101", "102"]
    assert manager.submit_blocks(1, str) == ["ep-2"]  # ids are never reused


def test_default_id_prefixes_differ_between_managers(provider: ScriptedProvider) -> None:
    assert BlockManager(provider).id_prefix != BlockManager(provider).id_prefix


def test_poll_follows_pending_running_completed(
    provider: ScriptedProvider, manager: BlockManager, clock: Clock
) -> None:
    (block_id,) = manager.submit_blocks(1, str)
    assert manager.poll() == []
    clock.now = 1010.0
    set_state(provider, manager, block_id, JobState.RUNNING)
    assert manager.poll() == [BlockChange(block_id, BlockState.PENDING, BlockState.RUNNING)]
    clock.now = 1020.0
    set_state(provider, manager, block_id, JobState.COMPLETED, exit_code=0)
    assert manager.poll() == [BlockChange(block_id, BlockState.RUNNING, BlockState.ENDED, EndReason.COMPLETED)]
    record = manager.snapshot().get(block_id)
    assert record is not None
    assert (record.submitted_at, record.started_at, record.ended_at) == (1000.0, 1010.0, 1020.0)
    assert record.end_reason == EndReason.COMPLETED
    assert "exit code 0" in record.message
    assert manager.poll() == []  # ended blocks are not asked about again


@pytest.mark.parametrize(
    ("job_state", "reason"),
    [
        (JobState.TIMEOUT, EndReason.WALLTIME),
        (JobState.FAILED, EndReason.FAILED),
        (JobState.MISSING, EndReason.FAILED),
        (JobState.CANCELLED, EndReason.CANCELLED),
        (JobState.SCALED_IN, EndReason.CANCELLED),
        (JobState.COMPLETED, EndReason.COMPLETED),
    ],
)
def test_end_reasons(provider: ScriptedProvider, manager: BlockManager, job_state: JobState, reason: EndReason) -> None:
    (block_id,) = manager.submit_blocks(1, str)
    set_state(provider, manager, block_id, job_state)
    (change,) = manager.poll()
    assert change.new == BlockState.ENDED
    assert change.end_reason == reason
    assert manager.snapshot().ended == (block_id,)


def test_held_is_pending_and_unknown_keeps_the_last_state(provider: ScriptedProvider, manager: BlockManager) -> None:
    (block_id,) = manager.submit_blocks(1, str)
    set_state(provider, manager, block_id, JobState.HELD)
    assert manager.poll() == []
    assert manager.snapshot().pending == (block_id,)
    set_state(provider, manager, block_id, JobState.RUNNING)
    manager.poll()
    set_state(provider, manager, block_id, JobState.UNKNOWN)
    assert manager.poll() == []
    assert manager.snapshot().running == (block_id,)


def test_a_cancelled_block_ends_as_cancelled_however_the_scheduler_reports_it(
    provider: ScriptedProvider, manager: BlockManager
) -> None:
    first, second = manager.submit_blocks(2, str)
    assert manager.cancel([first, "no-such-block"]) == [first]
    assert provider.cancelled == ["101"]
    record = manager.snapshot().get(first)
    assert record is not None and record.cancel_requested
    set_state(provider, manager, first, JobState.COMPLETED)  # squeue lost it: Parsl says completed
    set_state(provider, manager, second, JobState.CANCELLED)  # cancelled by someone else
    manager.poll()
    ended = {record.block_id: record for record in manager.snapshot().blocks}
    assert ended[first].end_reason == EndReason.CANCELLED
    assert ended[second].end_reason == EndReason.CANCELLED
    assert "outside taskfabric" in ended[second].message
    assert manager.cancel([first]) == []  # already ended: nothing to do


def test_a_refused_cancel_is_reported_and_still_remembered(provider: ScriptedProvider, manager: BlockManager) -> None:
    (block_id,) = manager.submit_blocks(1, str)
    provider.refuse_cancel = True
    assert manager.cancel([block_id]) == []
    set_state(provider, manager, block_id, JobState.COMPLETED)
    manager.poll()
    record = manager.snapshot().get(block_id)
    assert record is not None and record.end_reason == EndReason.CANCELLED


def test_a_refused_submission_is_submit_failed_listing_what_went_out(
    provider: ScriptedProvider, manager: BlockManager
) -> None:
    provider.fail_submit_after = 1
    with pytest.raises(SubmitFailed) as caught:
        manager.submit_blocks(3, str)
    assert caught.value.submitted == ["ep-0"]
    assert "Invalid account" in str(caught.value)
    assert "SubmitException" in str(caught.value)
    assert isinstance(caught.value, ProviderError)
    assert manager.snapshot().pending == ("ep-0",)


def test_no_job_id_is_submit_failed(provider: ScriptedProvider, manager: BlockManager) -> None:
    provider.job_ids = [None]
    with pytest.raises(SubmitFailed, match="no job id"):
        manager.submit_blocks(1, str)


def test_a_failed_status_call_is_a_provider_error_and_changes_nothing(
    provider: ScriptedProvider, manager: BlockManager
) -> None:
    (block_id,) = manager.submit_blocks(1, str)
    provider.fail_status = True
    with pytest.raises(ProviderError, match="Unable to contact slurm controller"):
        manager.poll()
    assert manager.snapshot().pending == (block_id,)


def test_only_the_newest_ended_blocks_are_remembered(provider: ScriptedProvider, clock: Clock) -> None:
    manager = BlockManager(provider, id_prefix="ep", keep_ended=2, clock=clock)
    ids = manager.submit_blocks(4, str)
    for index, block_id in enumerate(ids):
        clock.now += 1
        set_state(provider, manager, block_id, JobState.COMPLETED)
        manager.poll()
        assert len(manager.snapshot().ended) == min(index + 1, 2)
    assert manager.snapshot().ended == tuple(ids[2:])


def test_views_for_the_strategy_combine_blocks_with_manager_activity(
    provider: ScriptedProvider, manager: BlockManager, clock: Clock
) -> None:
    fresh, busy, finished, gone = manager.submit_blocks(4, str)
    set_state(provider, manager, busy, JobState.RUNNING)
    set_state(provider, manager, finished, JobState.RUNNING)
    set_state(provider, manager, gone, JobState.TIMEOUT)
    clock.now = 1100.0
    manager.poll()
    activity = {
        busy: BlockActivity(managers=1, workers=4, outstanding_tasks=2, last_task_done_at=1050.0),
        finished: BlockActivity(managers=1, workers=4, last_task_done_at=1090.0),
    }
    views = {view.block_id: view for view in manager.snapshot().views(activity)}
    assert views[fresh] == BlockView(block_id=fresh, state=BlockState.PENDING, idle_since=1000.0)
    assert views[busy] == BlockView(
        block_id=busy, state=BlockState.RUNNING, managers=1, workers=4, outstanding_tasks=2, idle_since=None
    )
    assert views[finished].idle_since == 1090.0
    assert views[gone].state == BlockState.ENDED
