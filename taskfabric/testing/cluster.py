"""A private RabbitMQ cluster for one test module: `cluster_for_tests(directory)` starts a
`RabbitCluster` of three nodes (about 10-25 s on a loaded 2-core machine) and stops it afterwards.
Its tests may `kill(i)` and `start_member(i)` members; a member left killed is simply not stopped
again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from taskfabric.broker_config.cluster import RabbitCluster

__all__ = ["cluster_for_tests"]


@contextlib.contextmanager
def cluster_for_tests(directory: Path, *, size: int = 3) -> Iterator[RabbitCluster]:
    """A running cluster of `size` nodes in `directory` (a fresh one), stopped on exit."""
    cluster = RabbitCluster(directory, size=size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(timeout_s=30.0)
