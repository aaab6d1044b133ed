"""Queue depth of every endpoint over the last hour, sampled in memory by each forwarder replica.

DESIGN: throughput comes from the store (tasks carry `completed_at`, so the per-minute counts of
the last hour are one grouped query, the same on every replica and across restarts). Queue depth
has no such record: it is a state, not an event. A sampler reads the unfinished-task counts (one
grouped query over `ix_tasks_completed_at`, the one /metrics uses) every `ui.sample_period_s` and
keeps one hour of samples per endpoint here. Memory: 360 samples of two floats per endpoint at the
default period. A restarted replica starts a fresh chart; every replica samples the shared store,
so all replicas draw the same curve.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Mapping

from taskfabric.forwarder.records import TaskStatus

__all__ = ["WINDOW_S", "DepthSeries"]

#: how far back the charts look
WINDOW_S = 3600.0


class DepthSeries:
    """endpoint id -> (sampled at, waiting, running) samples of the last `WINDOW_S` seconds."""

    def __init__(self, *, period_s: float) -> None:
        self._max_samples = int(WINDOW_S / period_s) + 2
        self._samples: dict[uuid.UUID, collections.deque[tuple[float, int, int]]] = {}
        self._lock = threading.Lock()

    def record(
        self, counts: Mapping[tuple[uuid.UUID, TaskStatus], int], endpoint_ids: list[uuid.UUID], *, now: float
    ) -> None:
        """One sample for each of `endpoint_ids` (0 where `counts` has none); forgets others."""
        with self._lock:
            for endpoint_id in endpoint_ids:
                samples = self._samples.get(endpoint_id)
                if samples is None:
                    samples = self._samples[endpoint_id] = collections.deque(maxlen=self._max_samples)
                waiting = counts.get((endpoint_id, TaskStatus.WAITING), 0)
                running = counts.get((endpoint_id, TaskStatus.RUNNING), 0)
                samples.append((now, waiting, running))
            for gone in set(self._samples) - set(endpoint_ids):
                del self._samples[gone]

    def samples(self, endpoint_id: uuid.UUID, *, since: float) -> list[tuple[float, int, int]]:
        with self._lock:
            return [sample for sample in self._samples.get(endpoint_id, ()) if sample[0] >= since]
