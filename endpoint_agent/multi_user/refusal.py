"""Answering a refused user endpoint's waiting tasks with a typed error, so they end at once and
nothing runs. The parent uses the user endpoint's own access (from the start command): the
results are published as that endpoint's, which the forwarder stores only for its own tasks.
Each batch is acked only after its error results are confirmed (at-least-once, like an agent)."""

from __future__ import annotations

import logging
import queue
import ssl
import time

from taskfabric.endpoint_agent.broker_link import EndpointBrokerLink
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.errors import ErrorCode
from taskfabric.logs import wrap_with_logs
from taskfabric.protocol import Result, TaskError

__all__ = ["refuse_waiting_tasks"]

log = logging.getLogger(__name__)

#: stop once no task batch arrived for this long (the queue's backlog comes at once)
_QUIET_S = 1.5
_CONFIRM_S = 30.0


@wrap_with_logs
def refuse_waiting_tasks(
    connection: EndpointConnection, code: ErrorCode, message: str, *, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Fail every task waiting in the user endpoint's queue with `code`; returns how many."""
    link = EndpointBrokerLink(connection, wake=lambda: None, consumer_check_period_s=0, ssl_context=ssl_context)
    refused = 0
    try:
        link.start()
        deadline = time.monotonic() + _CONFIRM_S
        while not link.subscribe() and time.monotonic() < deadline:
            time.sleep(0.2)  # the control queue's backlog first, as any agent
        while True:
            try:
                batch, delivery = link.inbound.get(timeout=_QUIET_S)
            except queue.Empty:
                break
            now = time.time()
            results = [
                Result(
                    task_id=task.task_id, ok=False, error=TaskError(code=code.value, message=message), finished_at=now
                )
                for task in batch.tasks
            ]
            errors = [link.outcomes.get(timeout=_CONFIRM_S).error for _ in link.publish_results(results)]
            if any(error is not None for error in errors):
                log.warning("could not publish refusals: %s", errors)
                link.requeue(delivery)
                break
            link.ack(delivery)
            refused += len(results)
    finally:
        link.close()
    log.info("answered %d tasks of user endpoint %s with %s", refused, connection.endpoint_id, code.value)
    return refused
