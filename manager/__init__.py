"""The manager: one per compute node, started by an endpoint's provider.

It connects to the endpoint agent's interchange (ZeroMQ DEALER), registers its capacity (workers +
prefetch), receives task batches, runs them on a pool of worker processes (`taskfabric.manager.worker`,
the only place user payloads are unpickled), and returns results in batches. A worker that dies is
replaced and its task reported as `WORKER_LOST`; a task past its walltime is stopped
(`WALLTIME_EXCEEDED`); the manager exits when drained or when the interchange goes silent.

Who it talks to: the agent's interchange only (a ZeroMQ DEALER, CurveZMQ-encrypted when the agent
says so) and its own worker processes (over pipes); never the broker or the forwarder.

State: the tasks queued on this node and the pool's per-worker assignments, in memory only.
"""

from __future__ import annotations

import typing

from taskfabric.lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from taskfabric.manager.execution import TaskRunner, WalltimeExceededError
    from taskfabric.manager.manager import Manager, ManagerSettings
    from taskfabric.manager.pool import WorkerPool

__all__ = ["Manager", "ManagerSettings", "TaskRunner", "WalltimeExceededError", "WorkerPool"]

# Loaded on first use: every worker process starts as `python -m taskfabric.manager.worker`,
# which imports this package first; it needs neither ZeroMQ nor the manager's loop (cold start).
_SOURCES = {
    "Manager": "taskfabric.manager.manager",
    "ManagerSettings": "taskfabric.manager.manager",
    "TaskRunner": "taskfabric.manager.execution",
    "WalltimeExceededError": "taskfabric.manager.execution",
    "WorkerPool": "taskfabric.manager.pool",
}


__getattr__ = _lazy_attributes(__name__, _SOURCES)
