"""What one `GET /v1/activity` costs the store (`taskfabric top` asks once per refresh), printed
as figures: the median times of its two store reads for one user, on a store that holds a backlog
of waiting tasks and a day of finished ones for that user and as many for another user:
`TaskTable.activity` (tasks finished within the window, recent failures: every request) and
`TaskTable.unfinished_counts` (a walk of the user's tasks: reused by the forwarder for 2 s).

Usage::

    .venv/bin/python benchmarks/activity_query.py                       # SQLite in a temporary file
    .venv/bin/python benchmarks/activity_query.py --waiting 500000 --finished 500000
    .venv/bin/python benchmarks/activity_query.py --database-url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import bindparam

from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.store.schema import tasks

_CHUNK = 5000
_DAY_S = 86400.0


def fill(store: Store, owner_id: uuid.UUID, *, waiting: int, finished: int, now: float) -> None:
    """`waiting` waiting tasks and `finished` tasks finished over the last day (5 % failed), on
    two endpoints of `owner_id`."""
    endpoints = [uuid.uuid4(), uuid.uuid4()]
    function_id = uuid.uuid4()
    finished_ids: list[uuid.UUID] = []
    for start in range(0, waiting + finished, _CHUNK):
        count = min(_CHUNK, waiting + finished - start)
        batch = [NewTask(task_id=uuid.uuid4(), function_id=function_id, payload=b"x") for _ in range(count)]
        store.tasks.insert(
            owner_id=owner_id,
            endpoint_id=endpoints[start // _CHUNK % 2],
            client_python="3.11.7",
            new_tasks=batch,
            created_at=now - _DAY_S - 60,
        )
        finished_ids += [task.task_id for index, task in enumerate(batch, start) if index >= waiting]
    update = (
        tasks.update()
        .where(tasks.c.task_id == bindparam("id"))
        .values(status=bindparam("state"), completed_at=bindparam("at"), error_code=bindparam("code"))
    )
    rows = [_finished_row(task_id, now) for task_id in finished_ids]
    with store.engine.begin() as connection:
        for start in range(0, len(rows), _CHUNK):
            connection.execute(update, rows[start : start + _CHUNK])


def _finished_row(task_id: uuid.UUID, now: float) -> dict[str, object]:
    failed = random.random() < 0.05
    return {
        "id": task_id,
        "state": (TaskStatus.FAILED if failed else TaskStatus.SUCCESS).value,
        "at": now - random.uniform(0, _DAY_S),
        "code": "TASK_FAILED" if failed else None,
    }


def median_ms(read: Callable[[], object], *, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        read()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--waiting", type=int, default=100_000, help="waiting tasks per user")
    parser.add_argument("--finished", type=int, default=100_000, help="tasks finished over the last day, per user")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'store.db'}"
        with Store.open(url) as store:
            now = time.time()
            watched, other = uuid.uuid4(), uuid.uuid4()
            began = time.perf_counter()
            for owner_id in (watched, other):
                fill(store, owner_id, waiting=args.waiting, finished=args.finished, now=now)
            filled_s = time.perf_counter() - began
            print(f"{store.backend}: filled {2 * (args.waiting + args.finished)} tasks in {filled_s:.1f} s")
            scale = f"{args.waiting} waiting and {args.finished} finished tasks per user, 2 users"
            for window_s in (1.0, 60.0, 3600.0):
                figure = median_ms(
                    lambda window_s=window_s: store.tasks.activity(
                        watched, since=time.time() - window_s, failures=10, failures_since=time.time() - 3600
                    ),
                    runs=args.runs,
                )
                print(f"activity, window {window_s:g} s: median {figure:.1f} ms over {args.runs} runs ({scale})")
            figure = median_ms(lambda: store.tasks.unfinished_counts(watched), runs=args.runs)
            print(f"unfinished_counts: median {figure:.1f} ms over {args.runs} runs ({scale})")


if __name__ == "__main__":
    main()
