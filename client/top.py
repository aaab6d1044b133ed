"""`taskfabric top`: a live terminal view of your endpoints and tasks.

Each refresh takes a `Snapshot` with two requests as the user: `GET /v1/endpoints` (status,
managers, workers busy/idle, last heartbeat) and `GET /v1/activity` with `window_s` set to the
refresh interval (your waiting and running tasks per endpoint, the tasks that finished within the
interval, your newest failures). Rates are those finished counts divided by the window, which the
forwarder measures on its own clock. A failed refresh is a snapshot too (`error` set): the view
says the forwarder cannot be reached and the next refresh tries again.

The view is drawn with rich's `Live` on the alternate screen; the refresh runs on a daemon thread
so that `q` is read (through `KeyReader`, cbreak mode) while a slow request is under way, and the
terminal is restored however the loop ends.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from taskfabric.client.client import Client
from taskfabric.client.keys import KeyReader
from taskfabric.errors import TaskfabricError
from taskfabric.protocol.api import EndpointActivity, RecentFailure, parse

__all__ = [
    "QUIT_KEYS",
    "EndpointRow",
    "Snapshot",
    "render_view",
    "run_top",
    "snapshot_document",
    "take_snapshot",
]

#: keys that end the view
QUIT_KEYS = frozenset({"q", "Q"})
#: how often the loop looks for a key while a refresh is under way
_KEY_POLL_S = 0.05
_FAILURES_SHOWN = 10


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointRow:
    """One endpoint as the view shows it: its agent's last report and your tasks on it."""

    endpoint_id: str
    name: str
    status: str
    managers: int
    workers: int
    idle_workers: int
    last_heartbeat_at: float | None
    waiting: int
    running: int
    completed: int
    failed: int

    @property
    def busy_workers(self) -> int:
        return max(0, self.workers - self.idle_workers)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One refresh: what the forwarder said at `as_of` (its clock), or why it could not be asked."""

    url: str
    as_of: float
    window_s: float
    endpoints: list[EndpointRow]
    failures: list[RecentFailure]
    error: str | None = None

    @property
    def completed_per_s(self) -> float:
        return sum(row.completed for row in self.endpoints) / self.window_s

    @property
    def failed_per_s(self) -> float:
        return sum(row.failed for row in self.endpoints) / self.window_s


def take_snapshot(client: Client, *, window_s: float, failures: int = _FAILURES_SHOWN) -> Snapshot:
    """Ask the forwarder (raises the client's errors: `ServiceError` when unreachable)."""
    listed = client.list_endpoints()
    activity = client.activity(window_s=window_s, failures=failures)
    counts = {str(item.endpoint_id): item for item in map(_endpoint_activity, activity["endpoints"])}
    rows = [_row(info, counts.pop(str(info["id"]), None)) for info in listed]
    rows += [_unlisted_row(item) for item in counts.values()]  # tasks on endpoints you cannot list
    return Snapshot(
        url=client.config.url,
        as_of=float(activity["as_of"]),
        window_s=float(activity["window_s"]),
        endpoints=rows,
        failures=[parse(RecentFailure, item) for item in activity["recent_failures"]],
    )


def failed_snapshot(url: str, window_s: float, error: Exception) -> Snapshot:
    """The snapshot of a refresh that failed: the view shows `error` and keeps retrying."""
    return Snapshot(url=url, as_of=time.time(), window_s=window_s, endpoints=[], failures=[], error=str(error))


def _endpoint_activity(data: Any) -> EndpointActivity:
    return parse(EndpointActivity, data)


def _row(info: dict[str, Any], activity: EndpointActivity | None) -> EndpointRow:
    return EndpointRow(
        endpoint_id=str(info["id"]),
        name=str(info.get("display_name") or info.get("name") or info["id"]),
        status=str(info.get("status", "unknown")),
        managers=int(info.get("managers") or 0),
        workers=int(info.get("workers") or 0),
        idle_workers=int(info.get("idle_workers") or 0),
        last_heartbeat_at=info.get("last_heartbeat_at"),
        waiting=activity.waiting if activity else 0,
        running=activity.running if activity else 0,
        completed=activity.completed if activity else 0,
        failed=activity.failed if activity else 0,
    )


def _unlisted_row(activity: EndpointActivity) -> EndpointRow:
    endpoint_id = str(activity.endpoint_id)
    return EndpointRow(
        endpoint_id=endpoint_id,
        name=endpoint_id[:8],
        status="-",
        managers=0,
        workers=0,
        idle_workers=0,
        last_heartbeat_at=None,
        waiting=activity.waiting,
        running=activity.running,
        completed=activity.completed,
        failed=activity.failed,
    )


# --- one snapshot as JSON -----------------------------------------------------------------


def snapshot_document(snapshot: Snapshot) -> dict[str, Any]:
    """`taskfabric top --json`: the snapshot as one JSON-ready document."""
    return {
        "url": snapshot.url,
        "as_of": snapshot.as_of,
        "window_s": snapshot.window_s,
        "completed_per_s": snapshot.completed_per_s,
        "failed_per_s": snapshot.failed_per_s,
        "endpoints": [{**dataclasses.asdict(row), "busy_workers": row.busy_workers} for row in snapshot.endpoints],
        "recent_failures": [
            {
                "task_id": str(failure.task_id),
                "endpoint_id": str(failure.endpoint_id),
                "code": failure.code,
                "completed_at": failure.completed_at,
            }
            for failure in snapshot.failures
        ],
    }


# --- the view -----------------------------------------------------------------------------


def render_view(snapshot: Snapshot) -> Any:
    """The whole screen for one snapshot (a rich renderable)."""
    from rich.console import Group

    parts: list[Any] = [_header(snapshot)]
    if snapshot.error is not None:
        parts.append(_refresh_failed(snapshot))
    else:
        parts += [_endpoint_table(snapshot), _failure_table(snapshot)]
    parts.append(_footer())
    return Group(*parts)


def _header(snapshot: Snapshot) -> Any:
    from rich.text import Text

    header = Text.assemble(("taskfabric top", "bold"), f"  {snapshot.url}  {_clock(snapshot.as_of)}")
    if snapshot.error is None:
        header.append(
            f"   completed {snapshot.completed_per_s:.1f}/s   failed {snapshot.failed_per_s:.1f}/s"
            f"   (over {snapshot.window_s:g} s)"
        )
    return header


def _refresh_failed(snapshot: Snapshot) -> Any:
    """Why there are no figures (the forwarder unreachable, a token refused, ...)."""
    from rich.text import Text

    return Text(f"\nrefresh failed: {snapshot.error}\nretrying every {snapshot.window_s:g} s\n", style="red")


def _endpoint_table(snapshot: Snapshot) -> Any:
    from rich.table import Table

    table = Table(title="endpoints", title_justify="left", box=None, header_style="bold", expand=False)
    for column in ("endpoint", "status", "managers", "workers busy/idle", "waiting", "running"):
        table.add_column(column, justify="left" if column in ("endpoint", "status") else "right")
    table.add_column("done/s", justify="right")
    table.add_column("failed/s", justify="right")
    table.add_column("heartbeat", justify="right")
    for row in snapshot.endpoints:
        table.add_row(
            row.name,
            _status_text(row.status),
            str(row.managers),
            f"{row.busy_workers}/{row.idle_workers}",
            str(row.waiting),
            str(row.running),
            f"{row.completed / snapshot.window_s:.1f}",
            f"{row.failed / snapshot.window_s:.1f}",
            _age(row.last_heartbeat_at, snapshot.as_of),
        )
    if not snapshot.endpoints:
        table.add_row("(no endpoints)", "", "", "", "", "", "", "", "")
    return table


def _status_text(status: str) -> Any:
    from rich.text import Text

    colour = {"online": "green", "draining": "yellow", "degraded": "yellow", "offline": "red"}.get(status, "")
    return Text(status, style=colour)


def _failure_table(snapshot: Snapshot) -> Any:
    from rich.table import Table

    names = {row.endpoint_id: row.name for row in snapshot.endpoints}
    table = Table(title="recent failures", title_justify="left", box=None, header_style="bold")
    for column in ("time", "task", "endpoint", "error"):
        table.add_column(column, no_wrap=True)
    for failure in snapshot.failures:
        endpoint = str(failure.endpoint_id)
        name = names.get(endpoint, endpoint[:8])
        table.add_row(_clock(failure.completed_at), str(failure.task_id), name, failure.code)
    if not snapshot.failures:
        table.add_row("(none in the last hour)", "", "", "")
    return table


def _footer() -> Any:
    from rich.text import Text

    return Text("\nq: quit", style="dim")


def _clock(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def _age(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    return f"{max(0.0, now - timestamp):.0f} s ago"


# --- the live loop ------------------------------------------------------------------------


def run_top(
    client: Client,
    *,
    interval_s: float,
    console: Any,
    keys_from: IO[Any],
    refreshes: int | None = None,
) -> None:
    """Draw the view on `console` every `interval_s` until a key of `QUIT_KEYS` is read from
    `keys_from` (or after `refreshes` frames, when given). Returns normally on `q`; Ctrl-C raises
    `KeyboardInterrupt` after the terminal is restored."""
    from rich.live import Live
    from rich.text import Text

    def fetch() -> Snapshot:
        try:
            return take_snapshot(client, window_s=interval_s)
        except TaskfabricError as exc:
            return failed_snapshot(client.config.url, interval_s, exc)

    connecting = Text(f"taskfabric top: connecting to {client.config.url} ...")
    with KeyReader(keys_from) as keys, Live(connecting, console=console, screen=True, auto_refresh=False) as live:
        _loop(live, keys, fetch, interval_s=interval_s, refreshes=refreshes)


def _loop(
    live: Any, keys: KeyReader, fetch: Callable[[], Snapshot], *, interval_s: float, refreshes: int | None
) -> None:
    """Fetch in the background every `interval_s`, draw each snapshot, read keys meanwhile."""
    drawn = 0
    next_fetch_at = time.monotonic()
    pending: concurrent.futures.Future[Snapshot] | None = None
    while refreshes is None or drawn < refreshes:
        if pending is None and time.monotonic() >= next_fetch_at:
            pending = _in_background(fetch)
            next_fetch_at = time.monotonic() + interval_s
        if pending is not None and pending.done():
            live.update(render_view(pending.result()), refresh=True)
            drawn += 1
            pending = None
        wait_s = _KEY_POLL_S if pending is not None else max(0.0, next_fetch_at - time.monotonic())
        if keys.read(wait_s) in QUIT_KEYS:
            return


def _in_background(fn: Callable[[], Snapshot]) -> concurrent.futures.Future[Snapshot]:
    """Run `fn` on a daemon thread: a request still under way when the user quits must not keep
    the process alive."""
    future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the loop, which raises it
            future.set_exception(exc)

    threading.Thread(target=run, name="top-refresh", daemon=True).start()
    return future
