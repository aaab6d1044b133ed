"""`taskfabric top` in a pseudo-terminal, against a real fabric (forwarder, broker, endpoint agent).

The command runs as a child on a pty (`pty.fork`, so the pty is its controlling terminal and
Ctrl-C is a real SIGINT); the test reads what it draws, strips the escape sequences and reads the
frames as a person would: the endpoint and its figures, a failing task listed, waiting tasks
counted, completions counted; then `q` (or Ctrl-C) ends it with exit code 0, the alternate screen
left and the terminal's line mode (echo, canonical input) restored. `--once` and `--json` run
without a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfabric.client import Executor
from taskfabric.exit_codes import RET_ERROR, RET_OK
from taskfabric.testing import unique_name, wait_until

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TASKFABRIC = str(Path(sys.executable).parent / "taskfabric")
ROWS, COLUMNS = 50, 200
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
_HEADER = re.compile(r"completed (\d+\.\d)/s\s+failed (\d+\.\d)/s")
ENTER_ALTERNATE_SCREEN = "\x1b[?1049h"
LEAVE_ALTERNATE_SCREEN = "\x1b[?1049l"


def double(x: int) -> int:
    time.sleep(0.3)  # completions spread over a few refreshes
    return 2 * x


def refuse(x: int) -> int:
    raise ValueError(f"refused {x}")


class TerminalSession:
    """A command running on a pseudo-terminal of `ROWS` x `COLUMNS`, its output collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal, become the command
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
            # as a shell starts a foreground command: Ctrl-C interrupts it even when this test
            # runs in a background job (which inherits SIGINT ignored)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        self.pid, self.fd = pid, fd
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._output += data

    @property
    def raw(self) -> str:
        with self._lock:
            return self._output.decode("utf-8", errors="replace")

    def frames(self) -> list[str]:
        """The screens drawn so far, as plain text (one per `taskfabric top` header)."""
        text = _ESCAPE.sub("", self.raw)
        return ["taskfabric top" + part for part in text.split("taskfabric top")[1:]]

    def wait_for_frame(self, predicate: Callable[[str], bool], *, after: int = 0, what: str) -> str:
        """The first frame (from index `after`) that satisfies `predicate`."""

        def found() -> str | None:
            return next((frame for frame in self.frames()[after:] if predicate(frame)), None)

        try:
            return wait_until(found, timeout_s=60, interval_s=0.1, what=what)
        except TimeoutError:
            raise AssertionError(f"{what}; last frame:\n{(self.frames() or [''])[-1]}") from None

    def line_mode(self) -> tuple[bool, bool]:
        """(canonical input, echo) of the terminal now."""
        lflag = termios.tcgetattr(self.fd)[3]
        return bool(lflag & termios.ICANON), bool(lflag & termios.ECHO)

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_exit(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reader.join(timeout=5)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        raise AssertionError(f"the command did not exit; output:\n{self.raw[-2000:]}")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def top_session(fabric: Fabric) -> Iterator[Callable[..., TerminalSession]]:
    """Start `taskfabric top ARGS` on a pseudo-terminal as the fabric's user; killed afterwards."""
    sessions: list[TerminalSession] = []

    def start(*args: str, url: str | None = None) -> TerminalSession:
        env = {
            **os.environ,
            "TASKFABRIC_URL": url or fabric.url,
            "TASKFABRIC_TOKEN": fabric.token,
            "TERM": "xterm-256color",
        }
        session = TerminalSession([TASKFABRIC, "top", *args], env)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def _endpoint_line(frame: str, name: str) -> list[str]:
    """The cells of the endpoint table's row of `name` (split on whitespace)."""
    line = next((line for line in frame.splitlines() if line.strip().startswith(name)), None)
    assert line is not None, f"no row for {name} in:\n{frame}"
    return line.split()


def test_top_draws_refreshes_and_quits_on_q(fabric: Fabric, top_session: Callable[..., TerminalSession]) -> None:
    name = unique_name("top-ep")
    endpoint = fabric.start_endpoint(name)
    with fabric.client() as client:
        parked_name = unique_name("parked")
        parked = client.register_endpoint(parked_name)["endpoint_id"]  # never started: its tasks wait
    session = top_session("--interval", "0.5")

    first = session.wait_for_frame(lambda frame: name in frame, what=f"endpoint {name} drawn")
    cells = _endpoint_line(first, name)
    assert cells[1] == "online" and cells[3] == "0/2", first  # status, workers busy/idle
    assert session.line_mode() == (False, False), "top reads keys in cbreak mode"
    assert ENTER_ALTERNATE_SCREEN in session.raw
    drawn = len(session.frames())

    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        good = [executor.submit(double, i) for i in range(8)]
        bad = executor.submit(refuse, 1)
        assert [future.result(timeout=120) for future in good] == [2 * i for i in range(8)]
        with pytest.raises(ValueError, match="refused 1"):
            bad.result(timeout=120)
        failed_id = str(bad.task_id)
        function_id = client.register_function(double)
        batch = client.create_batch()
        for i in range(3):
            batch.add(function_id, i)
        client.batch_run(parked, batch)

    failure = session.wait_for_frame(lambda frame: failed_id in frame, after=drawn, what="the failure listed")
    line = next(line for line in failure.splitlines() if failed_id in line)
    assert name in line and "TASK_FAILED" in line, line
    session.wait_for_frame(
        lambda frame: parked_name in frame and _endpoint_line(frame, parked_name)[4] == "3",
        after=drawn,
        what="3 tasks waiting for the parked endpoint",
    )
    moved = [
        frame for frame in session.frames()[drawn:] if (match := _HEADER.search(frame)) and float(match.group(1)) > 0
    ]
    assert moved, "no frame showed a completion rate above 0"

    session.send(b"q")
    assert session.wait_exit() == RET_OK
    assert session.raw.rstrip().endswith(LEAVE_ALTERNATE_SCREEN) or LEAVE_ALTERNATE_SCREEN in session.raw[-200:]
    assert session.line_mode() == (True, True), "the terminal's line mode was not restored"


def test_top_shows_an_unreachable_forwarder_and_ctrl_c_quits(
    fabric: Fabric, top_session: Callable[..., TerminalSession]
) -> None:
    session = top_session("--interval", "0.3", url="http://127.0.0.1:9")  # the discard port: refused
    unreachable = "refresh failed: cannot reach the forwarder at http://127.0.0.1:9"
    session.wait_for_frame(lambda frame: unreachable in frame, what="the view says the forwarder is unreachable")
    frames = len(session.frames())
    session.wait_for_frame(lambda frame: unreachable in frame, after=frames, what="it keeps retrying")
    assert session.line_mode() == (False, False)
    session.send(b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground process group
    assert session.wait_exit() == RET_OK
    assert LEAVE_ALTERNATE_SCREEN in session.raw
    assert "Traceback" not in session.raw
    assert session.line_mode() == (True, True)


def _run(fabric: Fabric, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASKFABRIC_URL": url or fabric.url, "TASKFABRIC_TOKEN": fabric.token}
    return subprocess.run([TASKFABRIC, "top", *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_top_once_and_json_without_a_terminal(fabric: Fabric) -> None:
    name = unique_name("top-json")
    endpoint = fabric.start_endpoint(name)
    with fabric.client() as client, Executor(endpoint, client=client) as executor:
        failing = executor.submit(refuse, 2)
        with pytest.raises(ValueError):
            failing.result(timeout=120)

    once = _run(fabric, "--once")
    assert once.returncode == RET_OK, once.stderr
    assert name in once.stdout and "recent failures" in once.stdout
    assert ENTER_ALTERNATE_SCREEN not in once.stdout

    done = _run(fabric, "--json", "--interval", "600")
    assert done.returncode == RET_OK, done.stderr
    document = json.loads(done.stdout)
    assert document["window_s"] == 600
    row = next(row for row in document["endpoints"] if row["endpoint_id"] == endpoint)
    assert (row["name"], row["status"], row["workers"], row["waiting"]) == (name, "online", 2, 0)
    assert row["failed"] >= 1 and document["failed_per_s"] > 0
    failure = document["recent_failures"][0]
    assert failure["endpoint_id"] == endpoint and failure["code"] == "TASK_FAILED"
    uuid.UUID(failure["task_id"])

    unreachable = _run(fabric, "--json", url="http://127.0.0.1:9")
    assert unreachable.returncode == RET_ERROR
    assert unreachable.stdout == "" and "Traceback" not in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "cannot reach" in unreachable.stderr
