"""`taskfabric agent run`: the agent process of one endpoint (what `endpoint start` launches)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.paths import AgentPaths
from taskfabric.endpoint_agent.supervisor import supervise as supervise_agent
from taskfabric.exit_codes import RET_CRASHED
from taskfabric.gc_tuning import tune_for_service
from taskfabric.logs import run_guarded, setup_logging
from taskfabric.secret_env import exec_without_secrets, scrub_environment

__all__ = ["agent", "run_agent"]

log = logging.getLogger(__name__)


def run_agent(endpoint_dir: Path, *, log_to_stderr: bool = True) -> int:
    """Run the agent of the endpoint in `endpoint_dir` (config.yaml + connection.json) until stopped."""
    # imported here: `agent supervise` (this module too) needs neither the agent nor Parsl
    from taskfabric.endpoint_agent.agent import Agent
    from taskfabric.endpoint_agent.config import EndpointConfig

    paths = AgentPaths(endpoint_dir)
    config = EndpointConfig.from_file(paths.config) if paths.config.exists() else EndpointConfig()
    connection = EndpointConnection.load(paths.connection)
    setup_logging(getattr(logging, config.log_level.upper()), file=paths.log, stream=log_to_stderr)
    paths.pid.write_text(str(os.getpid()))
    paths.problem.unlink(missing_ok=True)  # an earlier run's problem is not this run's
    removed = scrub_environment(secrets=connection.secret_values())
    if removed:  # names only, never values
        log.info("removed %s from the environment managers and workers inherit", ", ".join(removed))

    def main() -> int:
        if config.multi_user:
            from taskfabric.endpoint_agent.multi_user.parent import MultiUserAgent

            return MultiUserAgent(config, connection, paths).run()
        agent = Agent(config, connection, paths)
        tune_for_service()
        return agent.run()

    try:
        # the reason belongs in agent.log, not only on a stdout nobody reads; the supervisor
        # restarts the agent after RET_CRASHED
        return run_guarded(main, what=f"the agent of endpoint {connection.endpoint_id}", crash_code=RET_CRASHED)
    finally:
        for leftover in (paths.pid, paths.problem):
            try:
                leftover.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s: %s", leftover, exc)


def _secrets_of(endpoint_dir: Path) -> list[str]:
    """The endpoint's broker password (none while connection.json is missing or unreadable: the
    agent then fails at start and says why)."""
    try:
        return EndpointConnection.load(AgentPaths(endpoint_dir).connection).secret_values()
    except Exception:  # reported properly by run_agent
        return []


@click.group()
def agent() -> None:
    """The endpoint agent process (started by `taskfabric endpoint start`)."""


@agent.command()
@click.option(
    "--endpoint-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The endpoint's folder, with config.yaml and connection.json.",
)
@click.option("--quiet", is_flag=True, help="Log only to agent.log in the endpoint folder.")
def run(endpoint_dir: Path, quiet: bool) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT (then it drains and stops)."""
    exec_without_secrets(secrets=_secrets_of(endpoint_dir))
    sys.exit(run_agent(endpoint_dir, log_to_stderr=not quiet))


@agent.command()
@click.option(
    "--endpoint-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The endpoint's folder, with config.yaml and connection.json.",
)
def supervise(endpoint_dir: Path) -> None:
    """Run the agent and restart it when it crashes (with back-off, at most 5 times in 10 minutes)."""
    exec_without_secrets(secrets=_secrets_of(endpoint_dir))
    setup_logging(logging.INFO, file=AgentPaths(endpoint_dir).log, stream=False)
    sys.exit(
        run_guarded(lambda: supervise_agent(endpoint_dir), what="the endpoint's supervisor", crash_code=RET_CRASHED)
    )
