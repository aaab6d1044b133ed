"""The interchange's ZeroMQ ROUTER: the only module of the agent importing zmq.

Managers connect with a DEALER whose identity is their manager id; every message is one frame
holding a packed protocol message. `poll()` also watches raw file descriptors (the agent's wake-up
pipe), so the agent loop sleeps in exactly one place.

With a CURVE secret key the ROUTER is a CurveZMQ server: every connection is encrypted, and a
manager can only connect when it knows the matching public key (`curve_keypair()` makes a pair).
Managers still prove themselves with the registration token; CURVE keeps it, the tasks and the
results from anyone watching the network.
"""

from __future__ import annotations

from typing import Protocol

import zmq

from taskfabric.errors import TaskfabricError
from taskfabric.zmq_poll import SocketPoller

__all__ = ["ManagerSockets", "RouterError", "RouterSocket", "curve_keypair"]


class RouterError(TaskfabricError):
    """The interchange's socket failed (e.g. the address could not be bound)."""


def curve_keypair() -> tuple[bytes, bytes]:
    """A new CurveZMQ (public, secret) key pair, Z85-encoded (40 bytes each)."""
    if not zmq.has("curve"):
        raise RouterError("this pyzmq/libzmq has no CURVE support: set interchange_encrypted: false")
    public, secret = zmq.curve_keypair()
    return public, secret


class RouterSocket(Protocol):
    """What the agent and the interchange need of the managers' socket: `ManagerSockets`, or an
    in-memory stand-in in unit tests."""

    @property
    def address(self) -> str: ...

    def watch(self, fd: int) -> None: ...

    def poll(self, timeout_s: float) -> tuple[bool, list[int]]: ...

    def receive_all(self, limit: int = 10_000) -> list[tuple[bytes, bytes]]: ...

    def send(self, manager_id: bytes, payload: bytes) -> bool: ...

    def close(self) -> None: ...


class ManagerSockets:
    """A ROUTER bound on `address`:`port` (port 0 picks a free one); a CurveZMQ server when given
    its `curve_secret_key`."""

    def __init__(self, address: str, port: int = 0, *, curve_secret_key: bytes | None = None) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        if curve_secret_key is not None:
            self._socket.setsockopt(zmq.CURVE_SERVER, 1)
            self._socket.setsockopt(zmq.CURVE_SECRETKEY, curve_secret_key)
        self.encrypted = curve_secret_key is not None
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a gone manager raises, not drops silently
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
        try:
            if port:
                self._socket.bind(f"tcp://{address}:{port}")
                self.port = port
            else:
                self.port = self._socket.bind_to_random_port(f"tcp://{address}", min_port=20000, max_port=32000)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise RouterError(f"cannot bind the interchange to {address}:{port or 'a free port'}: {exc}") from None
        self.address = f"tcp://{address}:{self.port}"
        self._poller = SocketPoller(self._socket, error=RouterError)

    def watch(self, fd: int) -> None:
        self._poller.watch(fd)

    def poll(self, timeout_s: float) -> tuple[bool, list[int]]:
        """Wait up to `timeout_s`; returns (messages waiting, readable fds)."""
        return self._poller.poll(timeout_s)

    def receive_all(self, limit: int = 10_000) -> list[tuple[bytes, bytes]]:
        """Waiting (manager id, payload) pairs, at most `limit`; never blocks."""
        messages: list[tuple[bytes, bytes]] = []
        while len(messages) < limit:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                raise RouterError(f"receive failed: {exc}") from None
            if len(frames) == 2:
                messages.append((frames[0], frames[1]))
        return messages

    def send(self, manager_id: bytes, payload: bytes) -> bool:
        """Send to one manager; False if it is not connected (any more)."""
        try:
            self._socket.send_multipart([manager_id, payload], zmq.NOBLOCK, copy=len(payload) < 65536)
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise RouterError(f"send failed: {exc}") from None
        return True

    def close(self) -> None:
        self._socket.close(linger=0)
