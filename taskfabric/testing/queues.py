"""Breaking a quorum queue the way a broker crash can (fault tests only).

On RabbitMQ 3.10 a quorum queue declared about a second before the broker is killed can come back
with members but no leader (shared/reference/rabbitmq-and-faults.md). Stopping the queue's Raft
server on the node gives exactly that state on demand: the queue stays declared, without a leader
and without an online member, and publishes to it are refused.
"""

from __future__ import annotations

import urllib.parse

from taskfabric.broker_config import RabbitNode

__all__ = ["make_leaderless"]


def make_leaderless(node: RabbitNode, queue: str, *, vhost: str | None = None) -> None:
    """Stop the Raft server of quorum queue `queue` on `node` (a private node of the test), on
    `vhost` (default: the node's own, see `RabbitNode`)."""
    if vhost is None:
        info = node.info()
        vhost = info.vhost if info is not None else "/"
    ra_name = f"{urllib.parse.quote(vhost, safe='')}_{queue}"
    reply = node.ctl("eval", f"ra:stop_server(quorum_queues, {{'{ra_name}', node()}}).")
    if reply.strip() != "ok":
        raise RuntimeError(f"could not stop the Raft server of {queue!r}: {reply.strip()}")
