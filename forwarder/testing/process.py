"""`taskfabric forwarder serve` as a subprocess on a free port, with a config file written for it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from taskfabric.errors import TaskfabricError
from taskfabric.testing import wait_until
from taskfabric.tls import client_ssl_context

__all__ = ["ForwarderProcess"]


class ForwarderProcess:
    """`taskfabric forwarder serve` in a subprocess. Use as a context manager."""

    def __init__(
        self,
        directory: Path,
        settings: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 60.0,
        ca_file: Path | None = None,
    ) -> None:
        """`ca_file`: the CA that signed the forwarder's certificate when it serves HTTPS."""
        self.directory = Path(directory)
        self.ca_file = ca_file
        self.settings = {"port": 0, **settings}
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self.log_file = self.directory / "forwarder.log"
        self.config_file = self.directory / "forwarder.yaml"
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> ForwarderProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(dict(self.settings)))
        env = {**os.environ, "TASKFABRIC_HOME": str(self.directory / "home"), **self.env}
        command = [
            _taskfabric_command(),
            "--log-level",
            "INFO",
            "forwarder",
            "serve",
            "--config",
            str(self.config_file),
        ]
        with open(self.log_file, "ab") as log_handle:
            self._process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log_handle, env=env, text=True, start_new_session=True
            )
        self.url = self._read_url()
        wait_until(self._answers, timeout_s=self.start_timeout_s, interval_s=0.05, what="the forwarder to answer")
        return self

    def _read_url(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        found: list[str] = []

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            line = self._process.stdout.readline()
            found.append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        if not found or not any(scheme in found[0] for scheme in ("http://", "https://")):
            raise TaskfabricError(f"the forwarder did not start; see {self.log_file}:\n{self.log_tail()}")
        return found[0].split()[-1]

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise TaskfabricError(f"the forwarder exited with {self._process.returncode}:\n{self.log_tail()}")
        try:
            verify = client_ssl_context(self.ca_file) if self.ca_file is not None else True
            return httpx.get(f"{self.url}/v1/version", timeout=2.0, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, *, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL (a crash: no clean stop, leases and queues left for their TTLs); waits for it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> ForwarderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _taskfabric_command() -> str:
    script = Path(sys.executable).parent / "taskfabric"
    if script.exists():
        return str(script)
    found = shutil.which("taskfabric")
    if found is None:
        raise TaskfabricError("the `taskfabric` command is not installed (pip install -e .)")
    return found
