"""The endpoint's supervisor: the process `taskfabric endpoint start --detach` leaves running. It
runs the agent as its child and restarts it when it crashes, as systemd's `Restart=on-failure`
would: with back-off (1 s, 2 s, 4 s ... up to 30 s), at most `max_restarts` times in
`window_s` (then it gives up and says so). A clean exit (status 0, e.g. after `endpoint stop`)
ends the supervisor too.

Its state is in the endpoint folder: `supervisor.pid` while it runs, and `supervisor.json`
(restart count, the last exit's reason and time, whether it gave up), which
`taskfabric endpoint status` shows. Its own log lines go to `agent.log`, next to the agent's.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["RestartBudget", "RestartPolicy", "SupervisorState", "exit_reason", "read_state", "supervise"]

log = logging.getLogger(__name__)

STATE_FILE = "supervisor.json"
PID_FILE = "supervisor.pid"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """How often a crashed agent is restarted."""

    max_restarts: int = 5
    window_s: float = 600.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0


class RestartBudget:
    """Restarts allowed within a sliding window, and the back-off before the next one."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._recent: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        """Take one restart from the budget at `now`; False when the window's budget is spent."""
        while self._recent and now - self._recent[0] > self.policy.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.policy.max_restarts:
            return False
        self._recent.append(now)
        return True

    def delay_s(self) -> float:
        """Back-off before the restart just allowed: doubles with each recent restart."""
        exponent = max(0, len(self._recent) - 1)
        return float(min(self.policy.backoff_max_s, self.policy.backoff_initial_s * 2**exponent))


@dataclasses.dataclass
class SupervisorState:
    """What `supervisor.json` holds."""

    restarts: int = 0
    last_exit_reason: str | None = None
    last_exit_at: float | None = None
    gave_up: bool = False

    def save(self, directory: Path) -> None:
        temporary = directory / (STATE_FILE + ".tmp")
        temporary.write_text(json.dumps(dataclasses.asdict(self)))
        os.replace(temporary, directory / STATE_FILE)


def read_state(directory: Path) -> dict[str, Any]:
    """The supervisor's state for `endpoint status` (empty when it never ran here)."""
    try:
        data: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


def exit_reason(returncode: int) -> str:
    """A process's exit status in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


class _Supervisor:
    def __init__(self, endpoint_dir: Path, policy: RestartPolicy) -> None:
        self.endpoint_dir = endpoint_dir
        self.budget = RestartBudget(policy)
        self.state = SupervisorState()
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # the agent drains and exits 0

    def start_agent(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "taskfabric", "agent", "run", "--endpoint-dir", str(self.endpoint_dir)]
        with open(self.endpoint_dir / "agent.stdout", "ab") as output:
            return subprocess.Popen([*command, "--quiet"], stdout=output, stderr=subprocess.STDOUT)

    def run(self) -> int:
        self.state.save(self.endpoint_dir)
        while True:
            self.child = self.start_agent()
            if self.stopping.is_set():  # a stop arrived while starting it
                self.child.send_signal(signal.SIGTERM)
            returncode = self.child.wait()
            if returncode == 0 or self.stopping.is_set():
                log.info("agent %s; the supervisor stops", exit_reason(returncode))
                return 0 if returncode == 0 else 1
            if not self.restart_after(returncode):
                return 1

    def restart_after(self, returncode: int) -> bool:
        """Record a crash; wait the back-off; False when the restart budget is spent or a stop came."""
        reason = exit_reason(returncode)
        self.state.last_exit_reason = reason
        self.state.last_exit_at = time.time()
        if not self.budget.allow(time.monotonic()):
            self.state.gave_up = True
            self.state.save(self.endpoint_dir)
            policy = self.budget.policy
            log.error(
                "agent %s; giving up after %d restarts in %g s (see agent.log)",
                reason,
                policy.max_restarts,
                policy.window_s,
            )
            return False
        delay_s = self.budget.delay_s()
        self.state.restarts += 1
        self.state.save(self.endpoint_dir)
        log.warning("agent %s; restart %d in %g s", reason, self.state.restarts, delay_s)
        return not self.stopping.wait(delay_s)


def supervise(endpoint_dir: Path, policy: RestartPolicy | None = None) -> int:
    """Run and restart the agent of the endpoint in `endpoint_dir` until it exits cleanly or is
    stopped (SIGTERM/SIGINT, passed on to the agent); returns the exit code."""
    supervisor = _Supervisor(endpoint_dir, policy or RestartPolicy())
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    pid_file = endpoint_dir / PID_FILE
    pid_file.write_text(str(os.getpid()))
    try:
        return supervisor.run()
    finally:
        pid_file.unlink(missing_ok=True)
