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

from taskfabric.manager.execution import TaskRunner, WalltimeExceededError
from taskfabric.manager.manager import Manager, ManagerSettings
from taskfabric.manager.pool import WorkerPool

__all__ = ["Manager", "ManagerSettings", "TaskRunner", "WalltimeExceededError", "WorkerPool"]
