"""The command that starts a manager in a block, and the registration token it proves itself with.

The token is random per agent run and written to a file readable only by the endpoint's user
(`<endpoint>/blocks/manager.token`, which containers see through the mounted run directory): the
interchange turns away managers that do not present it, and the token never shows in `ps`. When
the interchange is encrypted (CurveZMQ), its public key goes in `blocks/interchange.key` beside it.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
import sys
from pathlib import Path

from taskfabric.private_files import open_private

__all__ = ["ManagerLaunch", "new_registration_token", "write_private_file"]


def new_registration_token() -> str:
    return secrets.token_urlsafe(24)


def write_private_file(path: Path, content: str | bytes) -> Path:
    """Write `content` to `path`, readable and writable by this user only (mode 0600, even if the
    file existed with another mode)."""
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content.encode() if isinstance(content, str) else content)
    return path


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManagerLaunch:
    """Everything a manager needs on its command line."""

    interchange_address: str
    workers: int
    prefetch: int
    heartbeat_period_s: float
    heartbeat_threshold_s: float
    max_result_bytes: int
    token_file: Path
    log_root: Path
    base_command: str | None = None
    #: the interchange's CurveZMQ public key; None when the link is not encrypted
    interchange_key_file: Path | None = None
    max_output_bytes: int = 65536
    started_report_delay_s: float = 0.1
    #: where tasks run (<task_workdir>/worker-<host>-<pid>); None: under each manager's own run folder
    task_workdir: Path | None = None
    keep_task_workdirs: bool = False

    def argv(self, block_id: str) -> list[str]:
        """The manager's command line for block `block_id` (a provider runs it once per node)."""
        base = (
            shlex.split(self.base_command)
            if self.base_command
            else [sys.executable, "-m", "taskfabric", "manager", "run"]
        )
        return [
            *base,
            "--interchange",
            self.interchange_address,
            "--workers",
            str(self.workers),
            "--prefetch",
            str(self.prefetch),
            "--block-id",
            block_id,
            "--heartbeat-period",
            f"{self.heartbeat_period_s:g}",
            "--heartbeat-threshold",
            f"{self.heartbeat_threshold_s:g}",
            "--max-result-bytes",
            str(self.max_result_bytes),
            "--token-file",
            str(self.token_file),
            *(["--interchange-key-file", str(self.interchange_key_file)] if self.interchange_key_file else []),
            "--log-dir",
            str(self.log_dir(block_id)),
            "--max-output-bytes",
            str(self.max_output_bytes),
            "--started-report-delay",
            f"{self.started_report_delay_s:g}",
            *(["--task-workdir", str(self.task_workdir)] if self.task_workdir else []),
            *(["--keep-task-workdirs"] if self.keep_task_workdirs else []),
        ]

    def log_dir(self, block_id: str) -> Path:
        """Where the managers and workers of block `block_id` write their logs."""
        return self.log_root / f"block-{block_id}"
