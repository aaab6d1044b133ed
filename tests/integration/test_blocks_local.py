"""BlockManager over a real LocalProvider (built by our factory): real process groups on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from taskfabric.endpoint_agent.block_types import BlockState, EndReason
from taskfabric.endpoint_agent.blocks import BlockManager, BlockRecord
from taskfabric.endpoint_agent.providers import build_provider, parse_provider_config, render_block_command
from taskfabric.testing import wait_until


@pytest.fixture
def blocks(tmp_path: Path) -> Iterator[BlockManager]:
    spec = parse_provider_config(
        {"type": "LocalProvider", "init_blocks": 0, "max_blocks": 3, "worker_init": "echo worker_init ran"}
    )
    manager = BlockManager(build_provider(spec, script_dir=tmp_path / "scripts"), label="tftest")
    yield manager
    manager.cancel([record.block_id for record in manager.snapshot().blocks if record.state != BlockState.ENDED])


def poll_until(manager: BlockManager, block_id: str, state: BlockState) -> BlockRecord:
    def reached() -> BlockRecord | None:
        manager.poll()
        record = manager.snapshot().get(block_id)
        return record if record is not None and record.state == state else None

    return wait_until(reached, timeout_s=30, what=f"block {block_id} to be {state}")


def test_a_running_block_is_cancelled_with_its_processes(blocks: BlockManager, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    (block_id,) = blocks.submit_blocks(
        1, lambda _: render_block_command(["sh", "-c", f"touch {marker}; sleep 60"], rundir=tmp_path)
    )
    record = poll_until(blocks, block_id, BlockState.RUNNING)
    wait_until(marker.exists, what="the block's command to start")
    leader = psutil.Process(int(record.job_id))  # LocalProvider's job id is the pid of the block's shell
    processes = [leader, *leader.children(recursive=True)]
    assert any("sleep" in " ".join(proc.cmdline()) for proc in processes)
    assert blocks.cancel([block_id]) == [block_id]
    ended = poll_until(blocks, block_id, BlockState.ENDED)
    assert ended.end_reason == EndReason.CANCELLED
    wait_until(lambda: not any(_alive(proc) for proc in processes), what="the block's processes to be gone")


def test_blocks_whose_command_exits_end_completed_or_failed(blocks: BlockManager) -> None:
    commands = iter(["true", "exit 3"])
    done, failed = blocks.submit_blocks(2, lambda _: next(commands))
    assert poll_until(blocks, done, BlockState.ENDED).end_reason == EndReason.COMPLETED
    bad = poll_until(blocks, failed, BlockState.ENDED)
    assert bad.end_reason == EndReason.FAILED
    assert "exit code 3" in bad.message


def test_worker_init_runs_once_before_the_command(blocks: BlockManager, tmp_path: Path) -> None:
    (block_id,) = blocks.submit_blocks(1, lambda _: "echo manager ran")
    poll_until(blocks, block_id, BlockState.ENDED)
    (script,) = (tmp_path / "scripts").glob(f"tftest.{block_id}.*.sh")
    text = script.read_text()
    assert text.count("echo worker_init ran") == 1
    output = Path(f"{script}.out").read_text()
    assert output.count("worker_init ran") == 1
    assert output.index("worker_init ran") < output.index("manager ran")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
