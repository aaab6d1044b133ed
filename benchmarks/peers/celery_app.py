"""The Celery peer for `taskfabric bench --compare celery`: a no-op and an echo task on the same RabbitMQ.

Configured from the environment (set by taskfabric/tools/bench_compare.py):
TASKFABRIC_PEER_AMQP_URL (the broker) and TASKFABRIC_PEER_QUEUE (a queue of this run's own).
The result backend is `rpc://` (results come back over AMQP), Celery's usual choice with RabbitMQ
when no database is wanted. Durable classic queue, persistent messages: Celery's defaults.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("taskfabric_bench_peer", broker=os.environ["TASKFABRIC_PEER_AMQP_URL"], backend="rpc://")
app.conf.update(
    task_default_queue=os.environ.get("TASKFABRIC_PEER_QUEUE", "taskfabric-bench-peer"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # bytes arguments and results (the 1 MiB echo): msgpack carries bytes as they are (JSON cannot;
    # pickle would be the same work, but a Celery worker refuses it when run as root, as CI does)
    task_serializer="msgpack",
    result_serializer="msgpack",
    accept_content=["msgpack", "json"],
)


@app.task(name="noop")
def noop() -> None:
    """Nothing, so the figures measure the system."""
    return


@app.task(name="echo")
def echo(value: bytes) -> bytes:
    """Its argument back (the 1 MiB echo scenario, issue 15)."""
    return value
