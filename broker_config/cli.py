"""`taskfabric broker up|down|status`: a private RabbitMQ node for development and tests."""

from __future__ import annotations

import json
from pathlib import Path

import click

from taskfabric.broker_config.node import DEFAULT_VHOST, NodeInfo, RabbitNode, check_vhost
from taskfabric.errors import BrokerError
from taskfabric.exit_codes import RET_OK, RET_STOPPED
from taskfabric.paths import taskfabric_home

__all__ = ["broker", "default_broker_dir", "node_document"]


def default_broker_dir() -> Path:
    return taskfabric_home() / "broker"


def _dir_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Directory of the node (default: $TASKFABRIC_HOME/broker, i.e. ~/.taskfabric/broker).",
    )(fn)


def node_document(info: NodeInfo) -> dict[str, str | bool | None]:
    """What `broker up|status --json` prints: the URLs (and, with TLS, the amqps URL and CA file)."""
    document: dict[str, str | bool | None] = {
        "running": True,
        "node": info.node_name,
        "amqp_url": info.amqp_url,
        "management_url": info.management_url,
        "vhost": info.vhost,
    }
    if info.amqps_url is not None:
        document.update(amqps_url=info.amqps_url, ca_file=info.ca_file)
    return document


def _print_info(info: NodeInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(node_document(info)))
        return
    click.echo(f"node:           {info.node_name}")
    click.echo(f"AMQP URL:       {info.amqp_url}")
    if info.amqps_url is not None:
        click.echo(f"AMQPS URL:      {info.amqps_url}")
        click.echo(f"CA file:        {info.ca_file}")
    click.echo(f"management URL: {info.management_url}")
    click.echo(f"vhost:          {info.vhost}")


def _vhost_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else check_vhost(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def broker() -> None:
    """Run a private RabbitMQ node (loopback only) in a directory."""


@broker.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the URLs as one JSON line.")
@click.option("--timeout", "timeout_s", default=90.0, show_default=True, help="Seconds to wait for the node.")
@click.option(
    "--tls",
    is_flag=True,
    help="Also listen for AMQP over TLS, with a certificate signed by a private CA made for the node; "
    "prints the amqps URL and the CA file (give it to the forwarder as broker_ca_file).",
)
@click.option(
    "--vhost",
    default=None,
    callback=_vhost_option,
    help=f"The virtual host taskfabric uses on the node, created if missing (default: the node's earlier one, "
    f"else {DEFAULT_VHOST!r}); the printed URLs name it.",
)
def up(directory: Path | None, as_json: bool, timeout_s: float, tls: bool, vhost: str | None) -> None:
    """Start the node (or find it running) and print its AMQP and management URLs."""
    node = RabbitNode(directory or default_broker_dir(), tls=tls, vhost=vhost)
    try:
        info = node.start(timeout_s=timeout_s)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    _print_info(info, as_json)


@broker.command()
@_dir_option
def down(directory: Path | None) -> None:
    """Stop the node (its data stays in the directory)."""
    node = RabbitNode(directory or default_broker_dir())
    node.stop()
    click.echo(f"stopped ({node.directory})")


@broker.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the URLs as one JSON line.")
@click.pass_context
def status(ctx: click.Context, directory: Path | None, as_json: bool) -> None:
    """Say whether the node runs, with its URLs; exit code 3 when stopped."""
    node = RabbitNode(directory or default_broker_dir())
    info = node.info()
    if info is None or not node.is_running():
        if as_json:  # still one JSON document, so scripts can parse either answer
            click.echo(json.dumps({"running": False, "directory": str(node.directory)}))
        click.echo(f"not running ({node.directory})", err=True)
        ctx.exit(RET_STOPPED)
    _print_info(info, as_json)
    ctx.exit(RET_OK)
