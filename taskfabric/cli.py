"""The root `taskfabric` command. Subcommands live with their components and load lazily, so
`taskfabric --help` stays fast and a component's dependencies load only when it is used.

Each command parses its options and calls a plain function (which tests call directly); taskfabric
errors become a one-line message and a named exit code (`taskfabric.exit_codes`).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from taskfabric import __version__
from taskfabric.errors import BrokerError, ConfigError, TaskfabricError
from taskfabric.exit_codes import RET_BROKER, RET_CONFIG, RET_ERROR
from taskfabric.logs import setup_logging

__all__ = ["SUBCOMMANDS", "main"]

#: command name -> "module:attribute" of its click command or group
SUBCOMMANDS: dict[str, str] = {
    "broker": "taskfabric.broker_config.cli:broker",
    "manager": "taskfabric.manager.cli:manager",
    "agent": "taskfabric.endpoint_agent.cli_agent:agent",
    "endpoint": "taskfabric.endpoint_agent.cli_endpoint:endpoint",
    "login": "taskfabric.client.cli:login",
    "whoami": "taskfabric.client.cli:whoami",
    "task": "taskfabric.client.cli:task",
    "function": "taskfabric.client.cli_functions:function",
    "top": "taskfabric.client.cli:top",
    "group": "taskfabric.client.cli_groups:group",
    "globus-compute": "taskfabric.client.cli_globus_compute:globus_compute",
    "forwarder": "taskfabric.forwarder.cli:forwarder",
    "admin": "taskfabric.forwarder.cli:admin",
    "dev": "taskfabric.tools.devfabric:dev",
    "bench": "taskfabric.tools.bench:bench",
}


class _LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            _fail(str(exc), RET_CONFIG)
        except BrokerError as exc:
            _fail(str(exc), RET_BROKER)
        except TaskfabricError as exc:
            _fail(str(exc), RET_ERROR)


def _fail(message: str, code: int) -> None:
    click.secho(f"Error: {message}", fg="red", err=True)
    sys.exit(code)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taskfabric")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="WARNING",
    show_default=True,
    envvar="TASKFABRIC_LOG_LEVEL",
    help="Logging level for messages on stderr.",
)
def main(log_level: str) -> None:
    """taskfabric: run Python functions on any registered endpoint, fire-and-forget."""
    setup_logging(getattr(logging, log_level.upper()))
