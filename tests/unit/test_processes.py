"""Process and port helpers on real processes and sockets (a child is reaped by a thread, as a
detached daemon is by init)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from taskfabric.processes import (
    free_port,
    free_ports,
    listens_on,
    pid_alive,
    port_free,
    port_open,
    terminate_then_kill,
    wait_for_exit,
)
from taskfabric.wake_pipe import WakePipe

_IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


def _child(code: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with process.stdout:
        assert process.stdout.readline().strip() == "ready"
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends
    return process


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_process_that_stops_on_sigterm_is_not_killed() -> None:
    process = _child("import time; print('ready', flush=True); time.sleep(60)")
    assert pid_alive(process.pid)
    assert terminate_then_kill(process.pid, timeout_s=10) is True
    assert not pid_alive(process.pid)
    # the reaping thread sets returncode just after the pid is gone: wait for it, not race it
    assert process.wait(timeout=10) == -15


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    process = _child(_IGNORES_SIGTERM)
    assert wait_for_exit(process.pid, timeout_s=0.2) is False
    assert terminate_then_kill(process.pid, timeout_s=0.3) is False
    assert not pid_alive(process.pid)
    assert process.wait(timeout=10) == -9


def test_a_gone_pid_counts_as_stopped() -> None:
    process = _child("print('ready', flush=True)")
    assert wait_for_exit(process.pid, timeout_s=10)
    assert terminate_then_kill(process.pid, timeout_s=1) is True


def test_ports(listener: int) -> None:
    assert port_open(listener) and not port_free(listener)
    port = free_port()
    assert port_free(port) and not port_open(port)
    picked = free_ports(5, (30000, 30010), picker=random.Random(7))
    assert len(set(picked)) == 5 and all(30000 <= p < 30010 and port_free(p) for p in picked)
    with pytest.raises(ValueError, match="cannot pick"):
        free_ports(3, (30000, 30002))


def test_a_wake_pipe_wakes_once_per_drain_and_never_blocks() -> None:
    pipe = WakePipe()
    try:
        for _ in range(100_000):  # far more than a pipe holds: a full pipe is still a wake-up
            pipe.wake()
        assert os.read(pipe.read_fd, 1) == b"\0"
        pipe.drain()
        with pytest.raises(BlockingIOError):
            os.read(pipe.read_fd, 1)
    finally:
        pipe.close()
    pipe.wake()  # after close: ignored, not an error


def test_listens_on_tells_a_process_s_own_listener_from_another_s() -> None:
    """`dev up` waits for *its* forwarder: another process answering on the port is not it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert listens_on(os.getpid(), port)
            assert not listens_on(other.pid, port)
            assert not listens_on(os.getpid(), free_port())
        finally:
            other.kill()
            other.wait()
    assert not listens_on(other.pid, port)  # gone
