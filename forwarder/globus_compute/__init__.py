"""The Globus-Compute-compatible API (issue 17; docs/globus-compute.md), mounted on the forwarder's
app beside `/v1` when `globus_compute.enabled` is set.

Who talks to it: the unmodified Globus Compute SDK (`Client`, `Executor`), over HTTP (`routes`,
`oauth`) and, for the Executor's results, over AMQP (`results`: per-user result queues on our
RabbitMQ). Its state: none of its own beyond the store's `globus_compute_task_groups`; tasks,
functions and endpoints are the native ones, reached through the forwarder's services.
"""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["install_globus_compute"]


def install_globus_compute(app: FastAPI) -> None:
    """Mount the OAuth2 token route and the Compute routes (the token route first: the Compute
    router ends with catch-alls naming unsupported routes). Imported here, not at the top: the
    routes import the forwarder's service, which imports this package's `results`."""
    from taskfabric.forwarder.globus_compute.oauth import oauth_router
    from taskfabric.forwarder.globus_compute.routes import compute_router

    app.include_router(oauth_router)
    app.include_router(compute_router)
