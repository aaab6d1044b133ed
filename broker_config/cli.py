"""`taskfabric broker up|down|status`: a private RabbitMQ node (or a cluster of them, `--nodes 3`)
for development, tests and small sites."""

from __future__ import annotations

import json
from pathlib import Path

import click

from taskfabric.broker_config.cluster import ClusterInfo, ClusterStatus, RabbitCluster
from taskfabric.broker_config.node import DEFAULT_VHOST, NodeInfo, RabbitNode, check_vhost
from taskfabric.errors import BrokerError
from taskfabric.exit_codes import RET_OK, RET_STOPPED
from taskfabric.paths import taskfabric_home

__all__ = ["broker", "cluster_document", "default_broker_dir", "node_document", "status_document"]


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


def cluster_document(info: ClusterInfo) -> dict[str, object]:
    """What `broker up --json` prints for a cluster: every member's URLs (`amqp_urls`, in member
    order), and the first member's as `amqp_url` / `management_url` for single-URL readers."""
    return {
        "running": True,
        "nodes": [
            {"node": node.node_name, "amqp_url": node.amqp_url, "management_url": node.management_url}
            for node in info.nodes
        ],
        "amqp_urls": info.amqp_urls,
        "management_urls": info.management_urls,
        "amqp_url": info.amqp_urls[0],
        "management_url": info.management_urls[0],
        "vhost": info.vhost,
    }


def status_document(status: ClusterStatus) -> dict[str, object]:
    """What `broker status --json` prints for a cluster: members (running or not) and the leader
    and members of each quorum queue (`queues` is null when no member's management API answered)."""
    return {
        "running": status.running > 0,
        "members": [
            {"node": member.node_name, "running": member.running, "amqp_url": member.amqp_url}
            for member in status.members
        ],
        "queues": None
        if status.queues is None
        else [
            {"queue": queue.queue, "leader": queue.leader, "members": list(queue.members), "online": list(queue.online)}
            for queue in status.queues
        ],
    }


def _print_cluster(info: ClusterInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(cluster_document(info)))
        return
    for node in info.nodes:
        click.echo(f"node:           {node.node_name}")
        click.echo(f"  AMQP URL:       {node.amqp_url}")
        click.echo(f"  management URL: {node.management_url}")
    click.echo(f"vhost:          {info.vhost}")
    click.echo(f"amqp_urls:      {','.join(info.amqp_urls)}")


def _print_status(status: ClusterStatus, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status_document(status)))
        return
    click.echo(f"members ({status.running} of {len(status.members)} running):")
    for member in status.members:
        click.echo(f"  {member.node_name:32} {'running' if member.running else 'stopped'}")
    if status.queues is None:
        click.echo("quorum queues: unknown (no management API answered)")
        return
    click.echo(f"quorum queues ({len(status.queues)}):")
    for queue in status.queues:
        click.echo(f"  {queue.queue}  leader {queue.leader or '-'}  online {len(queue.online)}/{len(queue.members)}")


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
@click.option(
    "--nodes",
    "size",
    type=click.IntRange(1, 9),
    default=None,
    help="Start a cluster of this many nodes (each in DIR/node-<i>, one Erlang cookie, loopback only) and print "
    "every node's URLs; 1 (the default for a new directory) is a single node. A cluster's directory "
    "remembers its size.",
)
def up(directory: Path | None, as_json: bool, timeout_s: float, tls: bool, vhost: str | None, size: int | None) -> None:
    """Start the node or cluster (or find it running) and print its AMQP and management URLs."""
    directory = directory or default_broker_dir()
    try:
        if (size or 1) > 1 or RabbitCluster.is_cluster(directory):
            _up_cluster(directory, as_json=as_json, timeout_s=timeout_s, tls=tls, vhost=vhost, size=size)
            return
        node = RabbitNode(directory, tls=tls, vhost=vhost)
        info = node.start(timeout_s=timeout_s)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    _print_info(info, as_json)


def _up_cluster(
    directory: Path, *, as_json: bool, timeout_s: float, tls: bool, vhost: str | None, size: int | None
) -> None:
    if tls:
        raise click.UsageError("--tls is for a single node; a cluster listens on plain AMQP (loopback only)")
    if RabbitNode(directory).info_file.exists():
        raise click.UsageError(f"{directory} holds a single node: stop it and use another directory for a cluster")
    cluster = RabbitCluster(directory, size=size, vhost=vhost)
    _print_cluster(cluster.start(timeout_s=max(timeout_s, 120.0)), as_json)


@broker.command()
@_dir_option
def down(directory: Path | None) -> None:
    """Stop the node, or every node of the cluster (the data stays in the directory)."""
    directory = directory or default_broker_dir()
    if RabbitCluster.is_cluster(directory):
        cluster = RabbitCluster(directory)
        cluster.stop()
        click.echo(f"stopped {cluster.size} nodes ({cluster.directory})")
        return
    node = RabbitNode(directory)
    node.stop()
    click.echo(f"stopped ({node.directory})")


@broker.command()
@_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the URLs as one JSON line.")
@click.pass_context
def status(ctx: click.Context, directory: Path | None, as_json: bool) -> None:
    """Say whether the node runs, with its URLs; for a cluster, its members (running or not) and
    the leader of each quorum queue. Exit code 3 when stopped (a cluster: no member running)."""
    directory = directory or default_broker_dir()
    if RabbitCluster.is_cluster(directory):
        cluster_status = RabbitCluster(directory).status()
        _print_status(cluster_status, as_json)
        ctx.exit(RET_OK if cluster_status.running else RET_STOPPED)
    node = RabbitNode(directory)
    info = node.info()
    if info is None or not node.is_running():
        if as_json:  # still one JSON document, so scripts can parse either answer
            click.echo(json.dumps({"running": False, "directory": str(node.directory)}))
        click.echo(f"not running ({node.directory})", err=True)
        ctx.exit(RET_STOPPED)
    _print_info(info, as_json)
    ctx.exit(RET_OK)
