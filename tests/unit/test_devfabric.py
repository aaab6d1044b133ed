"""The local fabric's helpers that need no running parts."""

from __future__ import annotations

import socket

import psutil

from taskfabric.processes import port_free


def test_a_port_whose_old_connections_linger_in_time_wait_is_kept() -> None:
    """Issue 10 item 7.3: the dev forwarder moved to another port after a restart because the probe
    bound without SO_REUSEADDR (the forwarder itself listens with it)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first, as a stopping forwarder does: TIME_WAIT on its side
        client.close()
    lingering = [
        c for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.status == "TIME_WAIT"
    ]
    assert lingering, "the setup did not leave the port in TIME_WAIT"
    assert port_free(port, reuse_address=True)


def test_a_port_in_use_is_not_free() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert not port_free(server.getsockname()[1], reuse_address=True)
