"""Large results in the SQL store against the blob store (issue 15): a real forwarder process
ingests `--tasks` results of `--result-bytes` (default 1,000 x 1 MiB) from a fake endpoint (its own
broker credentials), once with every result kept in its row (`blob_threshold_bytes` above the
result size: as before the blob store) and once with the default threshold (64 KiB). Printed per
run: the SQLite file's growth, the blob folder's size, ingest time and the forwarder's peak RSS.

Usage::

    .venv/bin/python benchmarks/blob_results.py
    .venv/bin/python benchmarks/blob_results.py --tasks 2000 --result-bytes 1048576

Uses the broker named by TASKFABRIC_TEST_AMQP_URL / TASKFABRIC_TEST_MANAGEMENT_URL, else a
private node in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path

import msgpack

from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.records import TaskStatus
from taskfabric.forwarder.store import Store
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi, ForwarderProcess
from taskfabric.protocol import Result, ResultBatch, pack
from taskfabric.testing import broker_for_tests, unique_name, wait_until
from taskfabric.transport import OutgoingMessage

RESULTS_PER_MESSAGE = 8
_MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="results to ingest per run (default 1,000)")
    parser.add_argument("--result-bytes", type=int, default=_MIB, help="bytes per result (default 1 MiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tf-blobs-") as folder, broker_for_tests(Path(folder) / "broker") as broker:
        for label, threshold in (("rows (before)", args.result_bytes * 2), ("blobs (after)", 64 * 1024)):
            run_folder = Path(folder) / label.split()[0]
            values = {
                "database_url": f"sqlite:///{run_folder / 'forwarder.db'}",
                "amqp_url": broker.amqp_url,
                "management_url": broker.management_url,
                "topology_prefix": unique_name("bench-blobs"),
                "blob_threshold_bytes": threshold,
                "quotas": {"max_result_bytes": max(args.result_bytes * 2, 10 * _MIB)},
            }
            settings = ForwarderSettings.from_mapping(values)
            create_user(settings, "bench")
            token = create_token(settings, "bench")
            with ForwarderProcess(run_folder / "forwarder", values) as process:
                run(label, run_folder, process, settings, token, args)


def run(
    label: str,
    folder: Path,
    process: ForwarderProcess,
    settings: ForwarderSettings,
    token: str,
    args: argparse.Namespace,
) -> None:
    with ForwarderApi(process.url, token) as api:
        registration = api.register_endpoint("bench")
        function_id = api.register_function(b"benchmark function body" * 40)
        body = msgpack.packb(
            {"tasks": [{"function_id": function_id, "payload": b"p"}] * args.tasks, "client_python": "3.11.7"}
        )
        response = api.http.post(
            f"/v1/endpoints/{registration['endpoint_id']}/tasks",
            content=body,
            headers={"Content-Type": "application/msgpack"},
        )
        response.raise_for_status()
        task_ids = [uuid.UUID(str(task_id)) for task_id in msgpack.unpackb(response.content)["task_ids"]]
    database = folder / "forwarder.db"
    size_before = _checkpointed_bytes(settings)
    value = os.urandom(args.result_bytes)
    store = Store.open(settings.store_url)
    with contextlib.closing(store), FakeEndpoint(registration) as endpoint:
        broker = registration["broker"]
        started = time.perf_counter()
        for start in range(0, len(task_ids), RESULTS_PER_MESSAGE):
            chunk = task_ids[start : start + RESULTS_PER_MESSAGE]
            message = pack(
                ResultBatch(results=[Result(task_id=t, ok=True, value=value, worker_python="3.11.7") for t in chunk])
            )
            endpoint.transport.publish_many(
                [
                    OutgoingMessage(
                        exchange=broker["results_exchange"],
                        routing_key=broker["result_queue"],
                        body=message,
                        user_id=broker["username"],
                    )
                ]
            )[0].result(timeout=120)
        wait_until(
            lambda: store.tasks.count(status=TaskStatus.WAITING) == 0,
            timeout_s=900,
            interval_s=0.2,
            what="all results stored",
        )
        elapsed = time.perf_counter() - started
    peak = _peak_rss_bytes(process.pid)
    wal = _sqlite_bytes(database) - database.stat().st_size
    grown = _checkpointed_bytes(settings) - size_before
    blobs = sum(path.stat().st_size for path in (folder / "blobs").rglob("*") if path.is_file())
    per_1000 = 1000 / len(task_ids)
    print(
        f"{label}: {len(task_ids):,} results of {args.result_bytes / _MIB:g} MiB in {elapsed:.1f} s; "
        f"SQL store +{grown * per_1000 / _MIB:,.2f} MiB per 1,000 results (checkpointed; the WAL was "
        f"{wal / _MIB:,.1f} MiB before); "
        f"blobs {blobs * per_1000 / _MIB:,.0f} MiB per 1,000; forwarder peak RSS {peak / _MIB:,.0f} MiB"
    )


def _checkpointed_bytes(settings: ForwarderSettings) -> int:
    """The database file's size after its write-ahead log is folded in (the log is reused)."""
    with contextlib.closing(Store.open(settings.store_url)) as store, store.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(settings.store_url.removeprefix("sqlite:///")).stat().st_size


def _sqlite_bytes(database: Path) -> int:
    """The database file and its write-ahead log."""
    return sum(path.stat().st_size for path in database.parent.glob(database.name + "*") if path.is_file())


def _peak_rss_bytes(pid: int | None) -> int:
    """VmHWM of the forwarder (Linux): its resident set's high-water mark."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
