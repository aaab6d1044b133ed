"""The manager's ZeroMQ DEALER to the interchange: the only module of the manager importing zmq.

`poll()` waits on the socket and on any number of raw file descriptors (the workers' result pipes)
at once, so the manager's loop has a single place where it sleeps.
"""

from __future__ import annotations

import zmq

from taskfabric.errors import TaskfabricError
from taskfabric.zmq_poll import SocketPoller

__all__ = ["InterchangeLink", "LinkError"]


class LinkError(TaskfabricError):
    """The ZeroMQ link to the interchange failed."""


class InterchangeLink:
    """A DEALER connected to the interchange's ROUTER at `address` (``tcp://host:port``); with the
    interchange's CURVE public key, an encrypted CurveZMQ client (its own key pair is made here)."""

    def __init__(self, address: str, identity: bytes, *, server_key: bytes | None = None) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.IDENTITY, identity)
        if server_key is not None:
            self._use_curve(server_key)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
        try:
            self._socket.connect(address)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise LinkError(f"cannot connect to the interchange at {address!r}: {exc}") from None
        self._poller = SocketPoller(self._socket, error=LinkError)

    def _use_curve(self, server_key: bytes) -> None:
        if not zmq.has("curve"):
            self._socket.close()
            raise LinkError("the interchange is encrypted, but this pyzmq/libzmq has no CURVE support")
        public, secret = zmq.curve_keypair()
        try:
            self._socket.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        except zmq.ZMQError:
            self._socket.close()
            raise LinkError(f"not a CurveZMQ public key (40 Z85 characters): {server_key[:60]!r}") from None
        self._socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        self._socket.setsockopt(zmq.CURVE_SECRETKEY, secret)

    def watch(self, fd: int) -> None:
        self._poller.watch(fd)

    def unwatch(self, fd: int) -> None:
        self._poller.unwatch(fd)

    def poll(self, timeout_s: float) -> tuple[bool, list[int]]:
        """Wait up to `timeout_s`; returns (the socket has messages, readable fds)."""
        return self._poller.poll(timeout_s)

    def send(self, payload: bytes) -> None:
        try:
            self._socket.send(payload, 0, copy=len(payload) < 65536)
        except zmq.ZMQError as exc:
            raise LinkError(f"send to the interchange failed: {exc}") from None

    def receive_all(self) -> list[bytes]:
        """Every message waiting on the socket (never blocks)."""
        messages = []
        while True:
            try:
                messages.append(self._socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                return messages
            except zmq.ZMQError as exc:
                raise LinkError(f"receive from the interchange failed: {exc}") from None

    def close(self) -> None:
        self._socket.close(linger=0)
