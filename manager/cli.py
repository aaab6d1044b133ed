"""`taskfabric manager run`: the command a provider starts on each node of a block."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import click

from taskfabric.exit_codes import RET_CRASHED
from taskfabric.gc_tuning import tune_for_service
from taskfabric.logs import run_guarded, setup_logging
from taskfabric.manager.manager import Manager, ManagerSettings
from taskfabric.manager.pool import REPORT_START_AFTER_S
from taskfabric.private_files import private_folder
from taskfabric.protocol import MAX_MANAGER_PREFETCH, MAX_MANAGER_WORKERS
from taskfabric.secret_env import exec_without_secrets, scrub_environment

__all__ = ["manager", "run_manager"]

TOKEN_ENV = "TASKFABRIC_MANAGER_TOKEN"

log = logging.getLogger(__name__)


def run_manager(settings: ManagerSettings) -> int:
    """Run one manager to completion; returns its exit code (`RET_CRASHED` after an unexpected
    error, logged with its traceback: the interchange then loses the manager and retries its tasks)."""

    removed = scrub_environment(secrets=[settings.registration_token])
    if removed:  # names only, never values
        log.info("removed %s from the environment workers inherit", ", ".join(removed))

    def main() -> int:
        manager = Manager(settings)
        tune_for_service()
        return manager.run()

    return run_guarded(main, what="the manager", crash_code=RET_CRASHED)


@click.group()
def manager() -> None:
    """The per-node manager (started by an endpoint's provider)."""


@manager.command()
@click.option("--interchange", "address", required=True, help="The interchange's address, tcp://HOST:PORT.")
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=MAX_MANAGER_WORKERS),
    required=True,
    help="Worker processes on this node.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0, max=MAX_MANAGER_PREFETCH),
    default=0,
    show_default=True,
    help="Extra tasks held beyond the workers.",
)
@click.option("--block-id", default=None, help="The block this manager belongs to.")
@click.option("--heartbeat-period", "heartbeat_period_s", type=float, default=10.0, show_default=True)
@click.option("--heartbeat-threshold", "heartbeat_threshold_s", type=float, default=60.0, show_default=True)
@click.option("--max-result-bytes", type=click.IntRange(min=1), default=10 * 1024 * 1024, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help=f"File holding the registration token (else ${TOKEN_ENV}).",
)
@click.option(
    "--interchange-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the interchange's CurveZMQ public key: the link is encrypted (the agent writes it).",
)
@click.option(
    "--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where worker output goes."
)
@click.option(
    "--task-workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Tasks run in TASK_WORKDIR/worker-<host>-<pid> (default: <log dir>/tasks, else a temporary folder).",
)
@click.option("--keep-task-workdirs", is_flag=True, help="Keep each task's working directory after it ends.")
@click.option(
    "--max-output-bytes",
    type=click.IntRange(min=0),
    default=65536,
    show_default=True,
    help="Kept of each task's stdout and stderr (the end).",
)
@click.option(
    "--started-report-delay",
    "started_report_delay_s",
    type=click.FloatRange(min=0.0, max=3600.0),
    default=REPORT_START_AFTER_S,
    show_default=True,
    help="Report a task's start once it has run this long (a shorter task reports only its result); 0: at once.",
)
@click.option("--log-level", default="INFO", show_default=True)
def run(
    address: str,
    workers: int,
    prefetch: int,
    block_id: str | None,
    heartbeat_period_s: float,
    heartbeat_threshold_s: float,
    max_result_bytes: int,
    token_file: Path | None,
    interchange_key_file: Path | None,
    log_dir: Path | None,
    task_workdir: Path | None,
    keep_task_workdirs: bool,
    max_output_bytes: int,
    started_report_delay_s: float,
    log_level: str,
) -> None:
    """Connect to the interchange and run its tasks on WORKERS processes. The registration token
    comes from --token-file or $TASKFABRIC_MANAGER_TOKEN (never the command line)."""
    token = token_file.read_text().strip() if token_file else os.environ.get(TOKEN_ENV, "")
    if token_file is not None:  # from $TASKFABRIC_MANAGER_TOKEN, it would be gone after the exec
        exec_without_secrets(secrets=[token])
    if log_dir is not None:  # one folder per manager: a block may span several nodes
        log_dir = log_dir / f"{socket.gethostname()}-{os.getpid()}"
        private_folder(log_dir)  # logs name tasks and hold workers' output: this user's only
    setup_logging(getattr(logging, log_level.upper(), logging.INFO), file=log_dir / "manager.log" if log_dir else None)
    settings = ManagerSettings(
        interchange_address=address,
        workers=workers,
        prefetch=prefetch,
        block_id=block_id,
        registration_token=token,
        interchange_key=interchange_key_file.read_bytes().strip() if interchange_key_file else None,
        heartbeat_period_s=heartbeat_period_s,
        heartbeat_threshold_s=heartbeat_threshold_s,
        max_result_bytes=max_result_bytes,
        log_dir=log_dir,
        task_workdir=task_workdir,
        keep_task_workdirs=keep_task_workdirs,
        max_output_bytes=max_output_bytes,
        started_report_delay_s=started_report_delay_s,
    )
    sys.exit(run_manager(settings))
