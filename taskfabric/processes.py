"""Small helpers for processes and ports on this machine, shared by the CLI's local fabric, the
endpoint folders (`taskfabric endpoint stop`), the private broker node and the test harnesses.

- ports: `free_port()` (one the OS picks), `free_ports(count, port_range)` (distinct ports from a
  range below the ephemeral one, for daemons that are told their ports up front), `port_free()`
  (nothing bound there), `port_open()` (something listens there);
- pids: `pid_alive()`, `wait_for_exit()`, and `terminate_then_kill()` (SIGTERM, a grace period,
  then SIGKILL).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time

__all__ = ["free_port", "free_ports", "pid_alive", "port_free", "port_open", "terminate_then_kill", "wait_for_exit"]

_LOOPBACK = "127.0.0.1"
_picker = random.Random()


def free_port(host: str = _LOOPBACK) -> int:
    """A port nothing is bound to right now (the OS's choice, from the ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_free(port: int, host: str = _LOOPBACK, *, reuse_address: bool = False) -> bool:
    """Whether `port` can be bound on `host` now. With `reuse_address`, probe as a server that sets
    SO_REUSEADDR does (uvicorn does): a port whose old connections linger in TIME_WAIT is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = _LOOPBACK, *, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on `port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        return probe.connect_ex((host, port)) == 0


def free_ports(count: int, port_range: tuple[int, int], *, picker: random.Random = _picker) -> list[int]:
    """`count` distinct ports from `port_range` (start inclusive, stop exclusive) that nothing
    listens on and that can be bound now. Pick a range below the ephemeral one, so the kernel does
    not hand the ports to outgoing connections before their daemons bind them."""
    if count > port_range[1] - port_range[0]:
        raise ValueError(f"cannot pick {count} ports from {port_range}")
    chosen: list[int] = []
    while len(chosen) < count:
        port = picker.randrange(*port_range)
        if port not in chosen and not port_open(port) and port_free(port):
            chosen.append(port)
    return chosen


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself has a listening TCP socket on `port` (any address): tells our
    own server from another process that answers on the same port."""
    import psutil

    try:
        sockets = psutil.Process(pid).net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port for s in sockets)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and we may signal it."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_for_exit(pid: int, timeout_s: float, *, interval_s: float = 0.05) -> bool:
    """Wait up to `timeout_s` for process `pid` to end; whether it did."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True


def terminate_then_kill(pid: int, timeout_s: float) -> bool:
    """SIGTERM `pid`, wait up to `timeout_s` for it to end, else SIGKILL it. True if it ended
    on its own (or was already gone), False if it had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if wait_for_exit(pid, timeout_s):
        return True
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    wait_for_exit(pid, 10.0)
    return False
