"""Processes that move large payloads keep glibc from mapping and unmapping every buffer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = """
import json, resource
from taskfabric.malloc_tuning import tune_malloc
tuned = tune_malloc()
data = bytes(1024 * 1024)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    copy = bytes(bytearray(data))  # two fresh 1 MiB buffers each time, as a body is gathered and kept
    del copy
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"tuned": tuned, "again": tune_malloc(), "faults": faults}))
"""


def _probe(**env: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    seen: dict[str, object] = json.loads(done.stdout)
    return seen


def test_tuned_buffers_reuse_their_pages() -> None:
    """200 fresh MiB buffers: untuned, each is new pages (about 256 faults apiece); tuned, the
    freed buffer's pages serve the next one."""
    tuned = _probe()
    assert tuned["tuned"] is True and tuned["again"] is True
    untuned = _probe(TASKFABRIC_MALLOC_TUNING="off")
    assert untuned["tuned"] is False
    assert isinstance(tuned["faults"], int) and isinstance(untuned["faults"], int)
    assert untuned["faults"] > 200 * 100  # the baseline this tuning is for
    assert tuned["faults"] < 2_000
