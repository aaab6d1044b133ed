"""Waiting on one ZeroMQ socket and any number of raw file descriptors at once.

The interchange's ROUTER (endpoint_agent/zmq_router.py) and the manager's DEALER
(manager/zmq_link.py) both sleep in exactly one place per loop pass: a poll over their socket and
the descriptors that can wake them (the agent's wake pipe, the workers' result pipes). This is
that poll, with ZeroMQ's errors translated into the caller's own error type.
"""

from __future__ import annotations

import zmq

from taskfabric.errors import TaskfabricError

__all__ = ["SocketPoller"]


class SocketPoller:
    """Polls `socket` for input, and the file descriptors given to `watch`."""

    def __init__(self, socket: zmq.Socket[bytes], *, error: type[TaskfabricError]) -> None:
        self._socket = socket
        self._error = error
        self._poller = zmq.Poller()
        self._poller.register(socket, zmq.POLLIN)

    def watch(self, fd: int) -> None:
        self._poller.register(fd, zmq.POLLIN)

    def unwatch(self, fd: int) -> None:
        self._poller.unregister(fd)

    def poll(self, timeout_s: float) -> tuple[bool, list[int]]:
        """Wait up to `timeout_s`; returns (the socket has messages, readable fds)."""
        try:
            events = self._poller.poll(max(0, int(timeout_s * 1000)))
        except zmq.ZMQError as exc:
            raise self._error(f"poll failed: {exc}") from None
        socket_ready = False
        fds: list[int] = []
        for item, _mask in events:
            if item is self._socket:
                socket_ready = True
            else:
                fds.append(int(item))
        return socket_ready, fds
