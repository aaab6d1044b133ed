"""Garbage-collector settings for the long-running service processes (forwarder, agent, manager).

Their hot paths allocate many small container objects per task (UUIDs, messages, records), so
with CPython's default first threshold (700 allocations) a collection ran every few hundred
tasks and took a fifth of the agent's CPU under load. Raising the first threshold makes those
young collections rare while reference cycles are still reclaimed; `gc.freeze()` moves what
start-up built (modules, the app, config) out of the collector's way for good.
Worker processes are left alone: they run user code, whose memory behaviour is its own business.
`tune_for_service` also applies `taskfabric.malloc_tuning` (large payload buffers without page faults).
"""

from __future__ import annotations

import gc

from taskfabric.malloc_tuning import tune_malloc

__all__ = ["SERVICE_GEN0_THRESHOLD", "tune_for_service"]

#: allocations between young collections in a service process (CPython's default is 700)
SERVICE_GEN0_THRESHOLD = 50_000


def tune_for_service() -> None:
    """Call once start-up is done, just before the service loop."""
    tune_malloc()
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(SERVICE_GEN0_THRESHOLD, gen1, gen2)
