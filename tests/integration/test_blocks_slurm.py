"""BlockManager over a real SlurmProvider (built by our factory) on the private single-node Slurm."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfabric.endpoint_agent.block_types import BlockState, EndReason
from taskfabric.endpoint_agent.blocks import BlockChange, BlockManager, BlockRecord
from taskfabric.endpoint_agent.providers import build_provider, parse_provider_config
from taskfabric.testing import wait_until
from taskfabric.testing.slurm import SlurmCluster

pytestmark = pytest.mark.slurm


def _slurm_blocks(
    slurm_cluster: SlurmCluster, script_dir: Path, monkeypatch: pytest.MonkeyPatch, walltime: str
) -> Iterator[BlockManager]:
    for name, value in slurm_cluster.env_overrides.items():
        monkeypatch.setenv(name, value)  # Parsl runs sbatch/squeue/scancel with this process's environment
    spec = parse_provider_config(
        {
            "type": "SlurmProvider",
            "partition": slurm_cluster.partition,
            "exclusive": False,
            "init_blocks": 0,
            "max_blocks": 2,
            "walltime": walltime,
            "worker_init": "echo worker_init ran",
            "launcher": {"type": "SingleNodeLauncher"},
        },
        source="test",
    )
    manager = BlockManager(build_provider(spec, script_dir=script_dir), label="tftest")
    yield manager
    live = [record.block_id for record in manager.snapshot().blocks if record.state != BlockState.ENDED]
    manager.cancel(live)


@pytest.fixture
def blocks(slurm_cluster: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockManager]:
    """A BlockManager over SlurmProvider(partition=debug, exclusive=False, launcher=SingleNodeLauncher())."""
    yield from _slurm_blocks(slurm_cluster, tmp_path / "scripts", monkeypatch, walltime="00:05:00")


@dataclasses.dataclass
class OutlivingBlock:
    """A block whose command outlives Slurm's shortest walltime, and the changes seen by its poller."""

    manager: BlockManager
    block_id: str
    changes: list[BlockChange]
    #: set once the poller has seen the block end (and recorded that change)
    ended: threading.Event


@pytest.fixture(scope="module", autouse=True)
def outliving_block(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutlivingBlock]:
    """A `sleep 600` block with Slurm's shortest walltime (one minute), submitted when the module
    starts and polled by a thread, as the agent's scaler polls: its minute runs while the module's
    other tests do (the walltime test, last, waits only for what is left of it)."""
    patch = pytest.MonkeyPatch()
    blocks = _slurm_blocks(slurm_cluster, tmp_path_factory.mktemp("slurm-short") / "scripts", patch, "00:01:00")
    manager = next(blocks)
    (block_id,) = manager.submit_blocks(1, lambda _: "sleep 600")
    changes: list[BlockChange] = []
    stop, ended = threading.Event(), threading.Event()

    def poll() -> None:
        while not stop.is_set():
            changes.extend(manager.poll())
            record = manager.snapshot().get(block_id)
            if record is not None and record.state == BlockState.ENDED:
                ended.set()
                return
            stop.wait(0.25)

    poller = threading.Thread(target=poll, name="walltime-block-poller", daemon=True)
    poller.start()
    try:
        yield OutlivingBlock(manager, block_id, changes, ended)
    finally:
        stop.set()
        poller.join(30)
        next(blocks, None)  # cancels the block if it still runs
        patch.undo()


def poll_until(
    manager: BlockManager, block_id: str, state: BlockState, changes: list[BlockChange], timeout_s: float = 60
) -> BlockRecord:
    def reached() -> BlockRecord | None:
        changes.extend(manager.poll())
        record = manager.snapshot().get(block_id)
        return record if record is not None and record.state == state else None

    return wait_until(reached, timeout_s=timeout_s, interval_s=0.25, what=f"block {block_id} to be {state}")


def test_a_block_goes_pending_running_and_ends_cancelled(blocks: BlockManager, slurm_cluster: SlurmCluster) -> None:
    (block_id,) = blocks.submit_blocks(1, lambda _: "sleep 30")
    submitted = blocks.snapshot().get(block_id)
    assert submitted is not None and submitted.state == BlockState.PENDING
    assert slurm_cluster.job_state(submitted.job_id) in ("PENDING", "RUNNING")

    changes: list[BlockChange] = []
    running = poll_until(blocks, block_id, BlockState.RUNNING, changes)
    assert BlockChange(block_id, BlockState.PENDING, BlockState.RUNNING) in changes
    assert running.started_at is not None
    assert slurm_cluster.job_state(running.job_id) == "RUNNING"

    assert blocks.cancel([block_id]) == [block_id]
    ended = poll_until(blocks, block_id, BlockState.ENDED, changes)
    assert ended.end_reason == EndReason.CANCELLED
    assert ended.ended_at is not None
    wait_until(lambda: slurm_cluster.job_state(ended.job_id) == "CANCELLED", timeout_s=30, what="Slurm to agree")


def test_blocks_whose_command_exits_end_completed_or_failed(blocks: BlockManager, slurm_cluster: SlurmCluster) -> None:
    commands = {}

    def command_for(block_id: str) -> str:
        commands[block_id] = "true" if not commands else "exit 3"
        return commands[block_id]

    done, failed = blocks.submit_blocks(2, command_for)
    changes: list[BlockChange] = []
    ended_ok = poll_until(blocks, done, BlockState.ENDED, changes)
    ended_bad = poll_until(blocks, failed, BlockState.ENDED, changes)
    assert ended_ok.end_reason == EndReason.COMPLETED
    assert ended_bad.end_reason == EndReason.FAILED  # squeue --states=all: accounting is off here
    assert slurm_cluster.job_state(ended_bad.job_id) == "FAILED"
    assert blocks.snapshot().ended == (done, failed)


def test_the_job_script_runs_worker_init_once_before_the_command(blocks: BlockManager, tmp_path: Path) -> None:
    (block_id,) = blocks.submit_blocks(1, lambda _: "echo manager ran")
    poll_until(blocks, block_id, BlockState.ENDED, [])
    (script,) = [
        path
        for path in (tmp_path / "scripts").iterdir()
        if path.name.startswith(f"tftest.{block_id}.") and path.suffix not in (".stdout", ".stderr")
    ]
    text = script.read_text()
    assert text.count("echo worker_init ran") == 1
    assert text.index("echo worker_init ran") < text.index("echo manager ran")
    stdout = Path(f"{script}.stdout").read_text()
    assert stdout.count("worker_init ran") == 1
    assert stdout.index("worker_init ran") < stdout.index("manager ran")


def test_a_block_that_outlives_its_walltime_ends_as_walltime(
    outliving_block: OutlivingBlock, slurm_cluster: SlurmCluster
) -> None:
    """Slurm stops the job at its one-minute limit (checked every half minute or so, KillWait 2 s);
    the block ends with the reason `walltime`, which the agent treats as its managers lost."""
    block_id, changes = outliving_block.block_id, outliving_block.changes
    wait_until(outliving_block.ended.is_set, timeout_s=150, interval_s=0.25, what=f"block {block_id} to end")
    record = outliving_block.manager.snapshot().get(block_id)
    assert record is not None
    assert changes == [
        BlockChange(block_id, BlockState.PENDING, BlockState.RUNNING),
        BlockChange(block_id, BlockState.RUNNING, BlockState.ENDED, EndReason.WALLTIME),
    ]
    assert record.end_reason == EndReason.WALLTIME
    assert slurm_cluster.job_state(record.job_id) == "TIMEOUT"
    assert record.started_at is not None and record.ended_at is not None
    assert record.ended_at - record.started_at >= 55  # stopped by the limit, not by anything earlier
