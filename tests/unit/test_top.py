"""`taskfabric top`'s parts that need no forwarder: merging the endpoint listing with the activity
counts, rates over the window, the JSON document, what a frame shows, the refresh loop's
handling of keys, and `KeyReader` on a real pseudo-terminal (cbreak mode entered, the saved mode
restored on exit and on an exception)."""

from __future__ import annotations

import io
import os
import termios
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from taskfabric.client.keys import KeyReader
from taskfabric.client.top import Snapshot, _loop, failed_snapshot, render_view, snapshot_document, take_snapshot
from taskfabric.errors import ServiceError

LAB = uuid.UUID(int=1)
SHARED = uuid.UUID(int=2)
FAILED_TASK = uuid.UUID(int=3)


class _ClientStub:
    """The two calls `take_snapshot` makes, answering canned bodies."""

    class config:  # `Client.config`: an object with a `url`
        url = "http://forwarder"

    def list_endpoints(self) -> list[dict[str, Any]]:
        return [
            {
                "id": str(LAB),
                "name": "lab",
                "display_name": None,
                "status": "online",
                "managers": 1,
                "workers": 4,
                "idle_workers": 1,
                "last_heartbeat_at": 995.0,
            }
        ]

    def activity(self, *, window_s: float, failures: int) -> dict[str, Any]:
        counts = {"waiting": 7, "running": 3, "completed": 4, "failed": 2, "cancelled": 0}
        return {
            "as_of": 1000.0,
            "window_s": window_s,
            "endpoints": [
                {"endpoint_id": str(LAB), **counts},
                {"endpoint_id": str(SHARED), **counts, "waiting": 1, "completed": 0, "failed": 0},
            ],
            "recent_failures": [
                {"task_id": str(FAILED_TASK), "endpoint_id": str(LAB), "code": "WORKER_LOST", "completed_at": 999.0}
            ],
        }


def _snapshot() -> Snapshot:
    return take_snapshot(_ClientStub(), window_s=2.0)  # type: ignore[arg-type]


def _text(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_a_snapshot_merges_endpoints_with_their_counts_and_rates_are_per_second_of_the_window() -> None:
    snapshot = _snapshot()
    lab, shared = snapshot.endpoints
    assert (lab.name, lab.status, lab.busy_workers, lab.idle_workers, lab.waiting, lab.running) == (
        "lab",
        "online",
        3,
        1,
        7,
        3,
    )
    # tasks on an endpoint the listing does not show (another owner's) still count
    assert (shared.endpoint_id, shared.name, shared.status, shared.waiting) == (str(SHARED), str(SHARED)[:8], "-", 1)
    assert snapshot.completed_per_s == 4 / 2.0 and snapshot.failed_per_s == 2 / 2.0
    document = snapshot_document(snapshot)
    assert document["completed_per_s"] == 2.0 and document["failed_per_s"] == 1.0
    assert document["endpoints"][0]["busy_workers"] == 3
    assert document["recent_failures"] == [
        {"task_id": str(FAILED_TASK), "endpoint_id": str(LAB), "code": "WORKER_LOST", "completed_at": 999.0}
    ]


def test_a_frame_shows_endpoints_rates_and_failures() -> None:
    text = _text(render_view(_snapshot()))
    assert "completed 2.0/s" in text and "failed 1.0/s" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("lab"))
    assert row.split()[:6] == ["lab", "online", "1", "3/1", "7", "3"]
    assert "5 s ago" in row
    failure = next(line for line in text.splitlines() if str(FAILED_TASK) in line)
    assert "lab" in failure and "WORKER_LOST" in failure
    assert "q: quit" in text


def test_a_failed_refresh_is_shown_not_raised() -> None:
    snapshot = failed_snapshot("http://forwarder", 1.0, ServiceError("cannot reach the forwarder", status=0))
    text = _text(render_view(snapshot))
    assert "refresh failed: cannot reach the forwarder" in text and "retrying every 1 s" in text


class _Live:
    def __init__(self) -> None:
        self.drawn: list[Any] = []

    def update(self, renderable: Any, *, refresh: bool) -> None:
        self.drawn.append(renderable)


class _Keys:
    """Keys typed at given reads (None: nothing typed within the timeout); reading past them
    fails the test (the loop did not stop when it should have)."""

    def __init__(self, keys: list[str | None]) -> None:
        self._keys: Iterator[str | None] = iter(keys)

    def read(self, timeout_s: float) -> str | None:
        try:
            return next(self._keys)
        except StopIteration:
            raise AssertionError("the loop went on reading keys") from None


def test_the_loop_draws_each_refresh_and_stops_on_q() -> None:
    live = _Live()
    fetched: list[Snapshot] = []

    def fetch() -> Snapshot:
        fetched.append(_snapshot())
        return fetched[-1]

    keys: list[str | None] = [*[None] * 50, "x", "q"]  # other keys are ignored
    _loop(live, _Keys(keys), fetch, interval_s=0.0, refreshes=None)  # type: ignore[arg-type]
    assert fetched and len(live.drawn) >= 1
    assert len(live.drawn) <= len(fetched)


def test_the_loop_raises_what_a_refresh_raised_unexpectedly() -> None:
    def broken() -> Snapshot:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _loop(_Live(), _Keys([None] * 10_000), broken, interval_s=0.0, refreshes=1)  # type: ignore[arg-type]


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """(master, slave) of a fresh pseudo-terminal."""
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _line_mode(fd: int) -> tuple[bool, bool]:
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ICANON), bool(lflag & termios.ECHO)


def test_key_reader_reads_single_keys_in_cbreak_mode_and_restores_the_terminal(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    assert _line_mode(slave) == (True, True)
    with os.fdopen(os.dup(slave), "rb", buffering=0) as stream:
        with KeyReader(stream) as keys:
            assert _line_mode(slave) == (False, False)
            assert keys.read(0.01) is None
            os.write(master, b"q")  # no Enter: cbreak delivers it at once
            assert keys.read(5.0) == "q"
        assert _line_mode(slave) == (True, True)
        with pytest.raises(KeyboardInterrupt), KeyReader(stream):
            raise KeyboardInterrupt
        assert _line_mode(slave) == (True, True)


def test_key_reader_without_a_terminal_reads_nothing() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"q")
        with os.fdopen(os.dup(read_end), "rb", buffering=0) as stream, KeyReader(stream) as keys:
            assert keys.read(0.01) is None  # a pipe is not a keyboard
    finally:
        os.close(read_end)
        os.close(write_end)
