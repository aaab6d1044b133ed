"""What abusive clients cost the forwarder (issue 12: nothing unauthenticated costs much).

Bounded and loopback-only: each section runs a few hostile clients against a real forwarder and
prints a figure line (and one JSON line): how long the forwarder took to refuse, how many body
bytes the client got to send first, and the forwarder's RSS before, at its peak during, and after.

1. unauthenticated-upload: a 50 MB POST /v1/functions without a token (Content-Length declared).
2. authenticated-oversize: a token, and a body above `limits.submit_body_bytes`: declared
   (refused on the headers) and chunked (refused at the running count, after the limit was read).
3. slow-loris: N connections sending their headers a byte every 0.5 s; when the forwarder cut
   them, and how long a normal request took meanwhile.
4. ws-ping-flood: 200,000 WebSocket pings from a client that reads nothing; the pongs it gets
   when it finally reads.
5. result-flood: a second user's round trip while the first user's endpoint floods results
   (`benchmarks/abuse_flood.py`, on a forwarder of its own with two users; `--flood-tasks 0` skips it).

Usage::

    .venv/bin/python benchmarks/abuse.py                       # starts a broker (or uses
                                                                # TASKFABRIC_TEST_AMQP_URL) and a forwarder
    .venv/bin/python benchmarks/abuse.py --upload-mb 50 --slow-connections 200
    .venv/bin/python benchmarks/abuse.py --url http://127.0.0.1:8470 --token tf_... --pid 12345

With `--url` the forwarder's RSS is read only if `--pid` names its process.

Another section (e.g. a second user's round trip during a result flood, benchmarks/abuse_flood.py)
plugs in as a `Section`: a function `(Target) -> dict` passed to `main(extra_sections=[...])` or
`run_sections`; it gets the target's URL, token and RSS sampler like the sections here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.forwarder.testing.abuse import connect, count_pongs, ping_frames, upload, websocket_connect
from taskfabric.testing import broker_for_tests, unique_name

_MIB = 1024 * 1024


@dataclasses.dataclass
class Target:
    """The forwarder under test: its URL, a valid token, its settings and (if known) its process."""

    url: str
    token: str
    settings: ForwarderSettings
    pid: int | None = None

    def rss_bytes(self) -> int | None:
        if self.pid is None:
            return None
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.pid).memory_info().rss)
        return None

    @contextlib.contextmanager
    def sampled_rss(self) -> Iterator[dict[str, int | None]]:
        """Yields a dict filled with `rss_before`, `rss_peak` (sampled every 20 ms), `rss_after`."""
        figures: dict[str, int | None] = {"rss_before": self.rss_bytes()}
        peak = [figures["rss_before"] or 0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], self.rss_bytes() or 0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield figures
        finally:
            stop.set()
            sampler.join()
            figures["rss_after"] = self.rss_bytes()
            figures["rss_peak"] = max(peak[0], figures["rss_after"] or 0) if self.pid is not None else None


#: one benchmark section: runs against the target, returns its figures (printed by `run_sections`)
Section = Callable[[Target], dict[str, Any]]


def unauthenticated_upload(target: Target, *, upload_mb: int = 50) -> dict[str, Any]:
    """A body of `upload_mb` MB without a token, to the route whose JSON body FastAPI parses
    before its dependencies run (the token check among them): refused on the headers."""
    path = "/v1/functions"
    with target.sampled_rss() as figures:
        started = time.perf_counter()
        outcome = upload(target.url, path, body_bytes=upload_mb * 1_000_000)
        figures["refused_after_s"] = time.perf_counter() - started
    return {
        "section": "unauthenticated-upload",
        "body_bytes": upload_mb * 1_000_000,
        "status": outcome.response.status if outcome.response else None,
        "client_sent_bytes": outcome.sent_bytes,
        **figures,
    }


def authenticated_oversize(target: Target, *, chunked: bool) -> dict[str, Any]:
    """A token, and a body 1 MiB above `limits.submit_body_bytes` (declared, or chunked)."""
    size = target.settings.limits.submit_body_bytes + _MIB
    path = f"/v1/endpoints/{uuid.uuid4()}/tasks"
    with target.sampled_rss() as figures:
        started = time.perf_counter()
        outcome = upload(target.url, path, body_bytes=size, token=target.token, chunked=chunked)
        figures["refused_after_s"] = time.perf_counter() - started
    return {
        "section": "authenticated-oversize-" + ("chunked" if chunked else "declared"),
        "body_bytes": size,
        "status": outcome.response.status if outcome.response else None,
        "client_sent_bytes": outcome.sent_bytes,
        **figures,
    }


def slow_loris(target: Target, *, connections: int = 200, interval_s: float = 0.5) -> dict[str, Any]:
    """`connections` connections send their headers a byte every `interval_s`; runs until the
    forwarder has cut them all (or header_timeout_s + 10 s), timing a normal request meanwhile."""
    deadline_s = target.settings.limits.header_timeout_s + 10.0
    with target.sampled_rss() as figures:
        started = time.perf_counter()
        cut_after = _hold_slow_connections(target.url, connections, interval_s, deadline_s, figures)
        figures["elapsed_s"] = time.perf_counter() - started
    return {
        "section": "slow-loris",
        "connections": connections,
        "cut_by_server": len(cut_after),
        "last_cut_after_s": max(cut_after) if cut_after else None,
        **figures,
    }


def _hold_slow_connections(
    url: str, count: int, interval_s: float, deadline_s: float, figures: dict[str, Any]
) -> list[float]:
    opened = time.perf_counter()
    sockets = [connect(url, timeout_s=5.0) for _ in range(count)]
    head = b"GET /v1/version HTTP/1.1\r\nHost: forwarder\r\nX-Slow: " + b"a" * 10_000
    cut_after: list[float] = []
    live = dict(enumerate(sockets))
    position = 0
    try:
        while live and time.perf_counter() - opened < deadline_s:
            for index, sock in list(live.items()):
                if _closed_by_server(sock, head[position : position + 1]):
                    cut_after.append(time.perf_counter() - opened)
                    del live[index]
            position += 1
            if position == 2:  # the attack is under way: does a normal client still get through?
                figures["normal_request_s"] = _timed_version_request(url)
            time.sleep(interval_s)
    finally:
        for sock in sockets:
            sock.close()
    return cut_after


def _closed_by_server(sock: socket.socket, byte: bytes) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(65536)
        return True  # an answer (the 408) or the end of the stream: the server cut it
    except BlockingIOError:
        pass
    except OSError:
        return True
    finally:
        sock.setblocking(True)
    try:
        sock.sendall(byte)
    except OSError:
        return True
    return False


def _timed_version_request(url: str) -> float | None:
    started = time.perf_counter()
    try:
        httpx.get(f"{url}/v1/version", timeout=30.0).raise_for_status()
    except httpx.HTTPError:
        return None
    return time.perf_counter() - started


def ws_ping_flood(target: Target, *, pings: int = 200_000) -> dict[str, Any]:
    """`pings` WebSocket pings from a client that reads nothing, then the pongs it finally reads."""
    with target.sampled_rss() as figures:
        sock = websocket_connect(target.url, "/v1/results/ws", target.token)
        try:
            frames = ping_frames(1000)
            for _ in range(pings // 1000):
                sock.sendall(frames)
            figures["pongs_received"] = count_pongs(sock)
        finally:
            sock.close()
    return {"section": "ws-ping-flood", "pings": pings // 1000 * 1000, **figures}


def result_flood(target: Target, *, flood_tasks: int) -> dict[str, Any]:
    """User B's round trips idle and during user A's result flood (`abuse_flood.run_flood`: it
    needs two users and A's endpoint credentials, so it runs a forwarder of its own on the same
    broker, not `target`)."""
    import abuse_flood  # benchmarks/ is on sys.path when this script runs

    figures = abuse_flood.run_flood(
        amqp_url=os.environ.get("TASKFABRIC_TEST_AMQP_URL"),
        management_url=os.environ.get("TASKFABRIC_TEST_MANAGEMENT_URL"),
        flood_tasks=flood_tasks,
    )
    return {
        "section": "result-flood",
        "idle_p50_s": figures.idle_p50_s,
        "idle_p99_s": figures.idle_p99_s,
        "flood_p50_s": figures.flood_p50_s,
        "flood_p99_s": figures.flood_p99_s,
        "p50_ratio": figures.p50_ratio,
        "p99_ratio": figures.p99_ratio,
        "flood_results_sent": figures.flood_results_sent,
    }


def default_sections(args: argparse.Namespace) -> list[Section]:
    sections: list[Section] = [
        lambda target: unauthenticated_upload(target, upload_mb=args.upload_mb),
        lambda target: authenticated_oversize(target, chunked=False),
        lambda target: authenticated_oversize(target, chunked=True),
        lambda target: slow_loris(target, connections=args.slow_connections),
        ws_ping_flood,
    ]
    if args.flood_tasks > 0:
        sections.append(lambda target: result_flood(target, flood_tasks=args.flood_tasks))
    return sections


def run_sections(target: Target, sections: Sequence[Section]) -> list[dict[str, Any]]:
    """Run each section in turn; print a figure line and a JSON line for each."""
    results = []
    for section in sections:
        figures = section(target)
        print(_figure_line(figures))
        print(json.dumps(figures))
        results.append(figures)
    return results


def _figure_line(figures: dict[str, Any]) -> str:
    parts = [str(figures.get("section"))]
    for key, value in figures.items():
        if key == "section":
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.3f}")
        elif isinstance(value, int) and key.startswith("rss"):
            parts.append(f"{key}={value / _MIB:.1f}MiB")
        else:
            parts.append(f"{key}={value}")
    return "  ".join(parts)


@contextlib.contextmanager
def private_forwarder(folder: Path) -> Iterator[Target]:
    """A broker (TASKFABRIC_TEST_AMQP_URL's, or a private node) and a forwarder with default limits."""
    with broker_for_tests(folder / "broker") as broker:
        values = {
            "database_url": f"sqlite:///{folder / 'forwarder.db'}",
            "amqp_url": broker.amqp_url,
            "management_url": broker.management_url,
            "topology_prefix": unique_name("abuse"),
        }
        settings = ForwarderSettings.from_mapping(values)
        create_user(settings, "abuse")
        token = create_token(settings, "abuse")
        with ForwarderProcess(folder / "forwarder", values) as process:
            yield Target(process.url, token, settings, process.pid)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running forwarder with default limits (default: start one)")
    parser.add_argument("--token", help="a valid token of the forwarder at --url")
    parser.add_argument("--pid", type=int, help="the process id of the forwarder at --url (for its RSS)")
    parser.add_argument("--upload-mb", type=int, default=50, help="the unauthenticated upload (default 50 MB)")
    parser.add_argument("--slow-connections", type=int, default=200, help="slow-loris connections (default 200)")
    parser.add_argument(
        "--flood-tasks",
        type=int,
        default=50_000,
        help="results in the result-flood section (default 50,000; 0 skips it)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, extra_sections: Sequence[Section] = ()) -> None:
    """Run the default sections, then `extra_sections`, against the forwarder at --url or a private one."""
    args = parse_args(argv)
    sections = [*default_sections(args), *extra_sections]
    if args.url:
        if not args.token:
            raise SystemExit("--url needs --token")
        run_sections(Target(args.url, args.token, ForwarderSettings(), args.pid), sections)
        return
    with tempfile.TemporaryDirectory(prefix="tf-abuse-") as folder, private_forwarder(Path(folder)) as target:
        run_sections(target, sections)


if __name__ == "__main__":
    main()
