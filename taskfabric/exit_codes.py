"""Named exit codes of the `taskfabric` command."""

from __future__ import annotations

__all__ = ["RET_BROKER", "RET_CONFIG", "RET_CRASHED", "RET_ERROR", "RET_OK", "RET_STOPPED", "RET_USAGE"]

RET_OK = 0
RET_ERROR = 1  # a taskfabric error was reported
RET_USAGE = 2  # click's own code for bad usage
RET_STOPPED = 3  # `status`: the thing asked about is not running
RET_CONFIG = 4  # a config file or setting is invalid
RET_BROKER = 5  # the broker could not be reached or refused us
# a long-running process (agent, supervisor, manager, worker) stopped on an unexpected error; its
# log has the traceback (the agent's supervisor, or the manager for a worker, starts a new one)
RET_CRASHED = 6
