"""The `custom` container type for real: managers' commands run inside a bubblewrap sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from taskfabric.endpoint_agent.block_types import BlockState, EndReason
from taskfabric.endpoint_agent.blocks import BlockManager
from taskfabric.endpoint_agent.containers import ContainerSettings, wrap_launch_command
from taskfabric.endpoint_agent.providers import build_provider, parse_provider_config, render_block_command
from taskfabric.testing import unique_name, wait_until

# What the sandboxed Python reports: its PID and PID namespace, and what it could write where.
PROBE = """
import json, os, sys
rundir, secret = sys.argv[1], sys.argv[2]
with open(f"/tmp/{secret}", "w") as f:
    f.write("private")
try:
    open(os.path.join(os.path.dirname(sys.executable), secret), "w").close()
    host_writable = True
except OSError:
    host_writable = False
report = {"pid": os.getpid(), "pid_ns": os.readlink("/proc/self/ns/pid"), "host_writable": host_writable,
          "tmp_sees_own_file": os.path.exists(f"/tmp/{secret}")}
with open(os.path.join(rundir, "report.json"), "w") as f:
    json.dump(report, f)
"""


def sandbox(template: str) -> ContainerSettings:
    return ContainerSettings(container_type="custom", container_cmd_options=template)


def check_report(rundir: Path, secret: str) -> None:
    report = json.loads((rundir / "report.json").read_text())  # written through the writable run directory
    assert report["pid_ns"] != os.readlink("/proc/self/ns/pid")  # its own PID namespace...
    assert report["pid"] < 10  # ...where it is one of the first processes
    assert report["tmp_sees_own_file"]
    assert not Path(f"/tmp/{secret}").exists()  # its /tmp was private
    assert not report["host_writable"]  # the host's files are read-only
    assert not (Path(sys.executable).parent / secret).exists()


def test_the_bwrap_template_runs_python_in_a_sandbox(bwrap_sandbox: str, tmp_path: Path) -> None:
    secret = unique_name("probe")
    command = wrap_launch_command(
        sandbox(bwrap_sandbox), [sys.executable, "-c", PROBE, str(tmp_path), secret], tmp_path
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    check_report(tmp_path, secret)


def test_a_block_runs_its_command_inside_the_container(bwrap_sandbox: str, tmp_path: Path) -> None:
    """The whole path: container settings -> block command -> LocalProvider job script -> bwrap."""
    rundir = tmp_path / "run dir"  # a space, to exercise the quoting end to end
    rundir.mkdir()
    secret = unique_name("probe")
    spec = parse_provider_config({"type": "LocalProvider", "init_blocks": 0})
    blocks = BlockManager(build_provider(spec, script_dir=tmp_path / "scripts"))
    command = render_block_command(
        [sys.executable, "-c", PROBE, str(rundir), secret], rundir=rundir, container=sandbox(bwrap_sandbox)
    )
    (block_id,) = blocks.submit_blocks(1, lambda _: command)

    def ended() -> bool:
        blocks.poll()
        record = blocks.snapshot().get(block_id)
        return record is not None and record.state == BlockState.ENDED

    wait_until(ended, timeout_s=30, what="the sandboxed block to finish")
    record = blocks.snapshot().get(block_id)
    assert record is not None
    assert record.end_reason == EndReason.COMPLETED, record.message
    check_report(rundir, secret)


def test_a_sandbox_that_cannot_start_fails_the_command(bwrap: str, tmp_path: Path) -> None:
    template = "bwrap --no-such-option {EXECUTOR_LAUNCH_CMD}"
    settings = ContainerSettings(container_type="custom", container_cmd_options=template)
    command = wrap_launch_command(settings, ["true"], tmp_path)
    assert subprocess.run(["bash", "-c", command], capture_output=True, timeout=60, check=False).returncode != 0
