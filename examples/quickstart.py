"""taskfabric quickstart: register a function, run a few hundred tasks on an endpoint, collect the
results with a progress bar, and see how an error comes back.

Run it against the local fabric that `taskfabric dev up` starts (that is what `make demo` does):

    .venv/bin/taskfabric dev up --detach
    .venv/bin/python examples/quickstart.py
    .venv/bin/taskfabric dev down

Elsewhere, pass the endpoint id: `python examples/quickstart.py --endpoint <id>`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import platform
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskfabric.client import Client, Executor

console = Console()


def is_prime(n: int) -> tuple[int, bool, str]:
    """Runs on the endpoint: a little CPU work, and where it ran."""
    import platform as remote_platform

    prime = n > 1 and all(n % k for k in range(2, math.isqrt(n) + 1))
    return n, prime, remote_platform.node()


def divide(a: float, b: float) -> float:
    return a / b


def pick_endpoint(client: Client, wanted: str | None) -> str:
    endpoints = client.list_endpoints()
    if wanted:
        return wanted
    online = [endpoint for endpoint in endpoints if endpoint["status"] == "online"]
    chosen = next((e for e in online if e["name"] == "local"), online[0] if online else None)
    if chosen is None:
        names = ", ".join(f"{e['name']} ({e['status']})" for e in endpoints) or "none"
        sys.exit(
            f"no endpoint is online (yours: {names}); start one: `taskfabric dev up` or `taskfabric endpoint start`"
        )
    return str(chosen["id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="endpoint id (default: the online one named 'local', or any online one)")
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()

    with Client() as client:
        who = client.whoami()
        endpoint_id = pick_endpoint(client, args.endpoint)
        console.print(f"[bold]taskfabric[/] at {client.config.url} as {who['username']}; endpoint {endpoint_id}")

        with Executor(endpoint_id, client=client) as executor:
            started = time.perf_counter()
            futures = [executor.submit(is_prime, n) for n in range(10_000, 10_000 + args.tasks)]
            primes, hosts = [], set()
            with Progress(
                TextColumn("running is_prime"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
            ) as progress:
                bar = progress.add_task("tasks", total=len(futures))
                for future in concurrent.futures.as_completed(futures):
                    n, prime, host = future.result()
                    hosts.add(host)
                    if prime:
                        primes.append(n)
                    progress.advance(bar)
            elapsed = time.perf_counter() - started
            rate = len(futures) / elapsed
            console.print(
                f"{len(futures)} tasks in {elapsed:.2f} s ({rate:,.0f} tasks/s) on {', '.join(sorted(hosts))}: "
                f"{len(primes)} primes, the largest {max(primes) if primes else '-'}"
            )
            console.print(f"the first task's id (usable later with `taskfabric task result`): {futures[0].task_id}")

            console.print("\nand an error, raised on the endpoint, re-raised here with its remote traceback:")
            failing = executor.submit(divide, 1, 0)
            try:
                failing.result()
            except ZeroDivisionError as exc:
                console.print(f"[red]ZeroDivisionError[/]: {exc}  (client Python {platform.python_version()})")
                console.print(str(exc.__cause__).rstrip(), style="dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
