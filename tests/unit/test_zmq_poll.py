"""The shared poll step: one ZeroMQ socket plus raw file descriptors."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import zmq

from taskfabric.errors import TaskfabricError
from taskfabric.zmq_poll import SocketPoller


class _PollFailed(TaskfabricError):
    pass


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    context = zmq.Context.instance()
    server, client = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    server.setsockopt(zmq.LINGER, 0)
    client.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client.connect(f"tcp://127.0.0.1:{port}")
    yield server, client
    server.close(linger=0)
    client.close(linger=0)


def test_socket_and_watched_fds_are_reported_apart(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    server, client = pair
    poller = SocketPoller(server, error=_PollFailed)
    read_fd, write_fd = os.pipe()
    try:
        poller.watch(read_fd)
        assert poller.poll(0) == (False, [])
        os.write(write_fd, b"x")
        assert poller.poll(5.0) == (False, [read_fd])
        os.read(read_fd, 1)
        client.send(b"hello")
        assert poller.poll(5.0) == (True, [])
        poller.unwatch(read_fd)
        os.write(write_fd, b"x")
        assert poller.poll(0) == (True, [])  # the pipe is no longer watched
    finally:
        os.close(read_fd)
        os.close(write_fd)
