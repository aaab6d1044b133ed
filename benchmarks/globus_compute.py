"""10,000 no-op tasks through the Globus Compute SDK's Executor against taskfabric, and through
taskfabric's own Executor, in the same run on the same fabric (docs/globus-compute.md).

    .venv/bin/python benchmarks/globus_compute.py [--tasks 10000] [--runs 3] [--workers 2]
        [--sdk-python PATH]

Brings up `taskfabric dev up --globus-compute` in a temporary TASKFABRIC_HOME (port 5000 must be
free), runs each client `--runs` times alternately (after a 20-task warm-up each), prints one JSON
line per run and the medians, and takes the fabric down. The SDK runs in a subprocess with the
variables `taskfabric globus-compute env` prints; `--sdk-python` names a Python that has
globus-compute-sdk (default: this one; `make install` installs it). Timed: from the first submit
until the last result is back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKFABRIC = [sys.executable, "-m", "taskfabric"]

SDK_RUN = """
import sys, time
from globus_compute_sdk import Executor
def noop():
    return None
endpoint_id, count, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Executor(endpoint_id=endpoint_id, batch_size=batch_size) as executor:
    [f.result(timeout=120) for f in [executor.submit(noop) for _ in range(20)]]
    started = time.perf_counter()
    futures = [executor.submit(noop) for _ in range(count)]
    for future in futures:
        future.result(timeout=600)
    print(time.perf_counter() - started)
"""


def noop() -> None:
    return None


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*TASKFABRIC, *args], env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"taskfabric {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def run_sdk(python: str, env: dict[str, str], endpoint_id: str, count: int, batch_size: int) -> float:
    done = subprocess.run(
        [python, "-c", SDK_RUN, endpoint_id, str(count), str(batch_size)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    if done.returncode != 0:
        raise SystemExit(f"the SDK run failed:\n{done.stdout}{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def run_ours(endpoint_id: str, count: int) -> float:
    from taskfabric.client import Client, Executor

    with Client() as client, Executor(endpoint_id, client=client) as executor:
        [future.result(timeout=120) for future in [executor.submit(noop) for _ in range(20)]]
        started = time.perf_counter()
        futures = [executor.submit(noop) for _ in range(count)]
        for future in futures:
            future.result(timeout=600)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sdk-python", default=sys.executable)
    parser.add_argument(
        "--sdk-batch-size", type=int, default=128, help="the SDK Executor's batch_size (its default: 128)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tf-gc-bench-"))
    env = {**os.environ, "TASKFABRIC_HOME": str(home)}
    os.environ["TASKFABRIC_HOME"] = str(home)  # our Executor, in this process
    try:
        _cli(env, "dev", "up", "--detach", "--globus-compute", "--workers", str(args.workers))
        endpoint_id = json.loads(_cli(env, "dev", "status", "--json"))["endpoint_id"]
        sdk_env = {
            **env,
            **json.loads(_cli(env, "globus-compute", "env", "--json")),
            "GLOBUS_COMPUTE_USER_DIR": str(home / "sdk"),
        }
        timings: dict[str, list[float]] = {"globus_compute_sdk": [], "taskfabric": []}
        for run in range(args.runs):
            timings["globus_compute_sdk"].append(
                run_sdk(args.sdk_python, sdk_env, endpoint_id, args.tasks, args.sdk_batch_size)
            )
            timings["taskfabric"].append(run_ours(endpoint_id, args.tasks))
            for client, seconds in timings.items():
                print(json.dumps({"run": run, "client": client, "tasks": args.tasks, "seconds": round(seconds[-1], 3)}))
        for client, seconds in timings.items():
            median = statistics.median(seconds)
            print(
                f"{client:20} median {median:7.2f} s  {args.tasks / median:8.0f} tasks/s  "
                f"(runs: {', '.join(f'{value:.2f}' for value in seconds)})"
            )
    finally:
        subprocess.run([*TASKFABRIC, "dev", "down"], env=env, capture_output=True, timeout=300, check=False)


if __name__ == "__main__":
    main()
