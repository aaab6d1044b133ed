"""The state vocabularies shared by the forwarder, the agent, the client and the CLI.

One enum per kind of object; their values are what the HTTP API, the store and the broker
messages carry. Nothing else in the code spells these states as string literals.
"""

from __future__ import annotations

import enum

__all__ = ["TERMINAL_TASK_STATES", "EndpointState", "TaskStatus"]


class TaskStatus(enum.StrEnum):
    """Where a task is: `waiting` (accepted, not started), `running` (a worker started it), or one
    of the terminal states `success`, `failed`, `cancelled`."""

    WAITING = "waiting"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the task has its one outcome."""
        return self in TERMINAL_TASK_STATES

    @property
    def pending(self) -> bool:
        """True while the task may still change."""
        return self not in TERMINAL_TASK_STATES


TERMINAL_TASK_STATES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED})


class EndpointState(enum.StrEnum):
    """An endpoint as its agent last reported it (or `offline` when silent). `degraded`: the agent
    is up but takes no tasks for now (e.g. its ledger's disk refuses writes); the status report
    says why."""

    ONLINE = "online"
    DRAINING = "draining"
    DEGRADED = "degraded"
    OFFLINE = "offline"
