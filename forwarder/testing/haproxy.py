"""HAProxy (Debian's `haproxy`) in front of forwarder replicas, as a child process on a free port.

The configuration is the one docs/operator.md "Two forwarders behind a load balancer" gives,
written for loopback ports: round robin, a health check on `GET /readyz` (store and broker) every 500 ms, a
connection refused by a dead replica redispatched to another, WebSocket upgrades passed through
(`timeout tunnel` keeps a results stream open while it is idle).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import httpx

from taskfabric.errors import TaskfabricError
from taskfabric.testing import wait_until

__all__ = ["HAProxy", "haproxy_config"]


def haproxy_config(port: int, backends: Sequence[str], *, bind: str = "127.0.0.1") -> str:
    """An HAProxy configuration balancing `bind:port` over the forwarder URLs `backends`."""
    servers = []
    for index, url in enumerate(backends):
        parts = urllib.parse.urlsplit(url)
        servers.append(f"    server forwarder{index} {parts.hostname}:{parts.port} check inter 500ms fall 2 rise 2")
    return "\n".join(
        [
            "global",
            "    maxconn 4096",
            "defaults",
            "    mode http",
            "    option redispatch",
            "    retries 3",
            "    timeout connect 2s",
            "    timeout client 120s",
            "    timeout server 120s",
            "    timeout tunnel 1h",
            "frontend taskfabric",
            f"    bind {bind}:{port}",
            "    default_backend forwarders",
            "backend forwarders",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            *servers,
            "",
        ]
    )


class HAProxy:
    """`haproxy -db -f <config>` balancing a free loopback port over `backends`. Context manager."""

    def __init__(self, directory: Path, backends: Sequence[str]) -> None:
        self.directory = Path(directory)
        self.backends = list(backends)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = self.directory / "haproxy.cfg"
        self.log_file = self.directory / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise TaskfabricError("haproxy is not installed (apt-get install -y haproxy)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(haproxy_config(self.port, self.backends))
        with open(self.log_file, "ab") as log_handle:
            self._process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_file)],
                stdout=log_handle,
                stderr=log_handle,
                start_new_session=True,
            )
        wait_until(self._answers, timeout_s=20, interval_s=0.05, what="haproxy to answer")
        return self

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise TaskfabricError(f"haproxy exited with {self._process.returncode}: see {self.log_file}")
        try:
            return httpx.get(f"{self.url}/v1/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
