"""Web dashboard page load times with 100,000 tasks in the store, on SQLite and PostgreSQL.

For each backend: a forwarder subprocess on a fresh store, one user (also an operator), one
endpoint and one function registered through the API, then `--tasks` tasks inserted through the
store layer (`TaskTable.insert`, batches of 10,000) and finished by SQL: 80% success and 10%
failed (completed over the last two hours, so the charts have an hour of data), 10% left waiting.
Then a session is opened with the sign-in form and each page is fetched `--requests` times
(after 3 warm-up fetches); the table shows the median, the 95th percentile and the largest time
of a whole HTTP request (server time plus a loopback round trip), and the page's size.

Usage::

    .venv/bin/python benchmarks/dashboard_pages.py                       # SQLite and PostgreSQL
    .venv/bin/python benchmarks/dashboard_pages.py --backends sqlite --tasks 20000

A private RabbitMQ node is started unless TASKFABRIC_TEST_AMQP_URL and TASKFABRIC_TEST_MANAGEMENT_URL
name one; PostgreSQL as for the tests (TASKFABRIC_TEST_POSTGRES_URL, a local server, or a private
cluster).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import update

from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.store.schema import tasks
from taskfabric.forwarder.testing import ForwarderApi, ForwarderProcess, postgres_for_tests
from taskfabric.testing import BrokerUnderTest, broker_for_tests, unique_name

INSERT_BATCH = 10_000
USER = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in the store (default 100,000)")
    parser.add_argument("--requests", type=int, default=20, help="timed fetches per page (default 20)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-ui-bench-") as folder, broker_for_tests(Path(folder) / "b") as broker:
        for backend in args.backends.split(","):
            with _database(backend, Path(folder)) as database_url:
                bench_backend(backend, database_url, broker, Path(folder) / backend, args)


@contextlib.contextmanager
def _database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'dashboard.db'}"
    elif backend == "postgres":
        with postgres_for_tests(folder / "postgres") as url:
            yield url
    else:
        raise SystemExit(f"unknown backend {backend!r} (sqlite or postgres)")


def bench_backend(
    backend: str, database_url: str, broker: BrokerUnderTest, folder: Path, args: argparse.Namespace
) -> None:
    values = {
        "database_url": database_url,
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("uibench"),
        "ui": {"admin_users": [USER]},
    }
    settings = ForwarderSettings.from_mapping(values)
    create_user(settings, USER)
    token = create_token(settings, USER)
    with ForwarderProcess(folder / "forwarder", values) as process:
        with ForwarderApi(process.url, token) as api:
            endpoint_id = uuid.UUID(api.register_endpoint("bench")["endpoint_id"])
            function_id = uuid.UUID(api.register_function(b"dashboard benchmark body" * 10))
        started = time.perf_counter()
        task_id = fill(settings, endpoint_id, function_id, args.tasks)
        print(f"\n{backend}: {args.tasks:,} tasks stored in {time.perf_counter() - started:.1f} s")
        with httpx.Client(base_url=process.url, timeout=60.0) as http:
            sign_in(http, token)
            next_page = _next_page(http)
            pages = {
                "endpoints": "/ui/endpoints",
                "endpoint detail (charts)": f"/ui/endpoints/{endpoint_id}",
                "tasks (first page)": "/ui/tasks",
                "tasks (next page)": next_page,
                "tasks, state=failed": "/ui/tasks?status=failed",
                "tasks, endpoint+function": f"/ui/tasks?endpoint_id={endpoint_id}&function_id={function_id}",
                "task detail": f"/ui/tasks/{task_id}",
                "functions (usage counts)": "/ui/functions",
                "admin": "/ui/admin",
            }
            print(f"{'page':<28} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'KiB':>6}")
            for name, path in pages.items():
                times, size = time_page(http, path, args.requests)
                p95 = statistics.quantiles(times, n=20, method="inclusive")[-1] if len(times) >= 2 else times[0]
                print(
                    f"{name:<28} {statistics.median(times):>10.1f} {p95:>8.1f} {max(times):>8.1f} {size / 1024:>6.1f}"
                )


def fill(settings: ForwarderSettings, endpoint_id: uuid.UUID, function_id: uuid.UUID, count: int) -> uuid.UUID:
    """Insert `count` tasks through the store layer, then finish most of them; returns one that
    succeeded."""
    now = time.time()
    with contextlib.closing(Store.open(settings.store_url)) as store:
        user = store.users.find(USER)
        assert user is not None
        ids: list[uuid.UUID] = []
        for start in range(0, count, INSERT_BATCH):
            batch = [NewTask(task_id=uuid.uuid4(), function_id=function_id, payload=b"") for _ in range(INSERT_BATCH)]
            batch = batch[: count - start]
            # spread over the last two hours, oldest first
            created_at = now - 7200 + 7200 * start / count
            store.tasks.insert(
                owner_id=user.user_id,
                endpoint_id=endpoint_id,
                client_python="3.11.7",
                new_tasks=batch,
                created_at=created_at,
            )
            ids.extend(task.task_id for task in batch)
        finish(store, ids, now)
    return ids[0]


def finish(store: Store, ids: list[uuid.UUID], now: float) -> None:
    """80% success, 10% failed (two error codes), the rest left waiting; finished over two hours."""
    success, failed = int(len(ids) * 0.8), int(len(ids) * 0.1)
    with store.engine.begin() as connection:
        for index in range(0, success + failed, 1000):
            chunk = ids[index : min(index + 1000, success + failed)]
            done_at = now - 7200 + 7200 * index / len(ids) + 1
            ok = index < success
            values = {
                "status": TaskStatus.SUCCESS.value if ok else TaskStatus.FAILED.value,
                "completed_at": done_at,
                "received_at": done_at - 0.5,
                "started_at": done_at - 0.4,
                "finished_at": done_at - 0.1,
                "attempts": 1,
                "worker_python": "3.11.7",
                "result": b"r" * 64 if ok else None,
                "stdout": "output\n" if ok else None,
                "error_code": None if ok else ("TASK_FAILED" if index % 2000 else "WALLTIME_EXCEEDED"),
                "error_message": None if ok else "ValueError: bench",
                "error_traceback": None if ok else "Traceback (most recent call last):\n  ...\nValueError: bench",
            }
            connection.execute(update(tasks).where(tasks.c.task_id.in_(chunk)).values(values))


def sign_in(http: httpx.Client, token: str) -> None:
    form = http.get("/ui/signin")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = http.post("/ui/signin", data={"token": token, "csrf_token": csrf.group(1), "next": "/ui/tasks"})
    assert answer.status_code == 303, answer.text


def _next_page(http: httpx.Client) -> str:
    found = re.search(r'href="([^"]+)" id="next-page"', http.get("/ui/tasks").text)
    assert found is not None, "a second page of tasks"
    return found.group(1).replace("&amp;", "&")


def time_page(http: httpx.Client, path: str, requests: int) -> tuple[list[float], int]:
    """Milliseconds per fetch of `path` (after 3 warm-up fetches), and the page's size in bytes."""
    size = 0
    for _ in range(3):
        size = len(_fetch(http, path))
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        _fetch(http, path)
        times.append((time.perf_counter() - started) * 1000)
    return times, size


def _fetch(http: httpx.Client, path: str) -> bytes:
    answer = http.get(path)
    if answer.status_code != 200:
        raise SystemExit(f"{path}: HTTP {answer.status_code}: {answer.text[:300]}")
    return answer.content


if __name__ == "__main__":
    main()
