"""The user endpoint processes of one multi-user parent: start, watch, stop, and the state file
`endpoint status` reads (`user_endpoints.json` in the parent's folder, root-only like the rest).

One process per user endpoint id (the forwarder derives it from parent, user and config). A start
command for a running one changes nothing; for one that exited (idle, crashed or killed) it starts
it again. A crashed one (non-zero exit, or killed) is also started again at once, at most
`CRASH_RESTARTS` times in `CRASH_WINDOW_S` (then with the user's next task): the tasks it held
(unacked, back in its queue; or in its ledger) run again either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pwd
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from taskfabric.endpoint_agent.multi_user.privilege import LocalAccount, read_account_file, start_as
from taskfabric.private_files import write_private

__all__ = ["STATE_FILE", "UserEndpointProcess", "UserEndpoints", "read_user_endpoints"]

log = logging.getLogger(__name__)

STATE_FILE = "user_endpoints.json"
#: immediate restarts of a crashed user endpoint allowed per window
CRASH_RESTARTS = 3
CRASH_WINDOW_S = 300.0


@dataclasses.dataclass(slots=True, kw_only=True)
class UserEndpointProcess:
    endpoint_id: uuid.UUID
    user: str
    account: LocalAccount
    folder: Path
    config_digest: str
    state: str = "starting"
    started_at: float = 0.0
    #: start commands received (each follows a submit of the user's tasks)
    submits: int = 0
    restarts: int = 0
    last_exit: int | None = None
    error: str = ""
    process: subprocess.Popen[bytes] | None = None
    crash_restarts: list[float] = dataclasses.field(default_factory=list)
    #: a process an earlier run of the parent started (found by its pid file): watched, not waited for
    adopted_pid: int | None = None
    #: when the last start command for it arrived, and its idle_shutdown_s (see `restart_exited`)
    last_command_at: float = 0.0
    idle_shutdown_s: float | None = None

    def missed_a_command(self, exited_at: float) -> bool:
        """An idle stop that may have raced a new task: a start command came after the user
        endpoint's last busy moment (it was idle for idle_shutdown_s before it exited)."""
        idle_s = self.idle_shutdown_s or 0.0
        return self.last_command_at >= exited_at - idle_s - 1.0 and self.last_command_at > self.started_at

    def may_restart_after_crash(self, now: float) -> bool:
        self.crash_restarts = [at for at in self.crash_restarts if now - at < CRASH_WINDOW_S]
        if len(self.crash_restarts) >= CRASH_RESTARTS:
            return False
        self.crash_restarts.append(now)
        return True

    @property
    def alive(self) -> bool:
        if self.adopted_pid is not None:
            return _running_as(self.adopted_pid, self.account.uid)
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        if self.adopted_pid is not None:
            return self.adopted_pid if self.alive else None
        return self.process.pid if self.process is not None and self.alive else None

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint_id": str(self.endpoint_id),
            "user": self.user,
            "account": self.account.name,
            "uid": self.account.uid,
            "state": self.state,
            "pid": self.pid,
            "started_at": self.started_at,
            "submits": self.submits,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "folder": str(self.folder),
            "config_digest": self.config_digest,
        }


class UserEndpoints:
    """The parent's table of user endpoint processes."""

    def __init__(self, state_file: Path, command: list[str], *, environment: dict[str, str] | None = None) -> None:
        self._state_file = state_file
        self._command = command
        self._environment = dict(environment or {})
        self.processes: dict[uuid.UUID, UserEndpointProcess] = {}
        self.refused: dict[uuid.UUID, dict[str, Any]] = {}

    def running(self, endpoint_id: uuid.UUID) -> bool:
        known = self.processes.get(endpoint_id)
        return known is not None and known.alive

    def recover(self) -> int:
        """After a restart of the parent (a crash, or its supervisor): take over the processes
        its state file lists as running and that still run as their account; returns how many."""
        adopted = 0
        for row in read_user_endpoints(self._state_file.parent):
            if row.get("state") != "running" or not row.get("account") or not row.get("folder"):
                continue
            try:
                account = LocalAccount.of(pwd.getpwnam(str(row["account"])))
                entry = UserEndpointProcess(
                    endpoint_id=uuid.UUID(str(row["endpoint_id"])),
                    user=str(row.get("user", "")),
                    account=account,
                    folder=Path(str(row["folder"])),
                    config_digest=str(row.get("config_digest", "")),
                    submits=int(row.get("submits") or 0),
                )
            except (KeyError, ValueError, TypeError):
                continue
            adopted += self.adopt(entry)
        return adopted

    def adopt(self, entry: UserEndpointProcess) -> bool:
        """Take over the process an earlier run of this parent left running for `entry` (its
        agent.pid, alive as the account): True when there is one, so none is started beside it
        (two agents would share one ledger)."""
        try:
            pid = int(read_account_file(entry.folder / "agent.pid", max_bytes=32).strip())
        except (OSError, ValueError):
            return False
        if not _running_as(pid, entry.account.uid):
            return False
        entry.adopted_pid, entry.state, entry.started_at = pid, "running", time.time()
        self.processes[entry.endpoint_id] = entry
        log.info("adopted user endpoint %s (pid %d) left by an earlier run", entry.endpoint_id, pid)
        self.save()
        return True

    def start(self, entry: UserEndpointProcess) -> None:
        """Start (or start again) the process of `entry` as its account."""
        entry.adopted_pid = None
        previous = self.processes.get(entry.endpoint_id)
        if previous is not None and previous is not entry:
            entry.submits, entry.restarts = previous.submits, previous.restarts + 1
            entry.crash_restarts = previous.crash_restarts
        elif previous is entry:
            entry.restarts += 1
        command = [*self._command, "agent", "run", "--endpoint-dir", str(entry.folder), "--quiet"]
        entry.process = start_as(
            entry.account, command, cwd=entry.account.home, log_file=entry.folder / "process.log", env=self._environment
        )
        entry.state, entry.started_at = "running", time.time()
        self.processes[entry.endpoint_id] = entry
        self.refused.pop(entry.endpoint_id, None)
        log.info(
            "started user endpoint %s for %s as %s (pid %d)",
            entry.endpoint_id,
            entry.user,
            entry.account.name,
            entry.process.pid,
        )
        self.save()

    def reap(self) -> list[UserEndpointProcess]:
        """Note the processes that exited (idle stops exit 0; anything else counts as a crash);
        returns those that exited now."""
        exited = []
        for entry in self.processes.values():
            if entry.state == "running" and entry.adopted_pid is not None and not entry.alive:
                entry.state, entry.adopted_pid = "stopped", None  # not our child: no exit status
                self.save()
            elif entry.state == "running" and entry.process is not None and entry.process.poll() is not None:
                entry.last_exit = entry.process.returncode
                entry.state = "stopped" if entry.last_exit == 0 else "crashed"
                log.info("user endpoint %s (%s) exited: %s", entry.endpoint_id, entry.account.name, entry.last_exit)
                exited.append(entry)
                self.save()
        return exited

    def restart_exited(self, now: float) -> None:
        """Start again the user endpoints that just crashed (within their restart budget), and
        those that stopped idle while a start command for them arrived (its task would wait)."""
        for entry in self.reap():
            if entry.state == "crashed" and entry.may_restart_after_crash(now):
                log.warning("user endpoint %s crashed (exit %s): starting it again", entry.endpoint_id, entry.last_exit)
            elif entry.state == "stopped" and entry.missed_a_command(now):
                log.info("user endpoint %s stopped idle as a task came: starting it again", entry.endpoint_id)
            else:
                continue
            try:
                self.start(entry)
            except OSError as exc:  # its folder is the account's: what it planted there stops only it
                log.warning("could not start user endpoint %s again: %s", entry.endpoint_id, exc)
                entry.error = str(exc)

    def stop_all(self, *, timeout_s: float) -> None:
        """SIGTERM every running process (each drains like any agent), SIGKILL what is left."""
        running = [entry for entry in self.processes.values() if entry.alive]
        for entry in running:
            pid = entry.pid
            if pid is not None:
                _signal(pid, signal.SIGTERM)  # the agent: it stops its own blocks
        deadline = time.monotonic() + timeout_s
        for entry in running:
            while entry.alive and time.monotonic() < deadline:
                time.sleep(0.05)
            pid = entry.pid
            if pid is not None:
                log.warning("user endpoint %s did not stop in time: killing it", entry.endpoint_id)
                _signal(pid, signal.SIGKILL, session=True)
            if entry.process is not None:
                entry.process.wait()
        self.reap()
        for entry in running:
            entry.state = "stopped"
        self.save()

    def note_refused(self, endpoint_id: uuid.UUID, user: str, code: str, message: str) -> None:
        self.refused[endpoint_id] = {
            "endpoint_id": str(endpoint_id),
            "user": user,
            "account": None,
            "state": "refused",
            "error": f"{code}: {message}",
            "at": time.time(),
        }
        self.save()

    def save(self) -> None:
        rows = [entry.describe() for entry in self.processes.values()] + list(self.refused.values())
        write_private(self._state_file, json.dumps({"user_endpoints": rows, "saved_at": time.time()}, indent=2))


def read_user_endpoints(folder: Path) -> list[dict[str, Any]]:
    """The rows of a parent's state file (none when it has not started one)."""
    try:
        data = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    rows = data.get("user_endpoints") if isinstance(data, dict) else None
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


def _signal(pid: int, signum: int, *, session: bool = False) -> None:
    try:
        if session:
            os.killpg(pid, signum)  # the agent and what it started in its session
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _running_as(pid: int, uid: int) -> bool:
    """Whether `pid` is a live (not zombie) process of `uid`."""
    try:
        process = psutil.Process(pid)
        return process.uids().real == uid and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
