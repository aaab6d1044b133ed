"""Service processes raise the young-generation threshold and freeze what start-up built."""

from __future__ import annotations

import json
import subprocess
import sys

from taskfabric.gc_tuning import SERVICE_GEN0_THRESHOLD

_PROBE = """
import gc, json
from taskfabric.gc_tuning import tune_for_service
before = gc.get_threshold()
tune_for_service()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_tune_for_service_in_a_fresh_interpreter() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout)
    assert seen["after"] == [SERVICE_GEN0_THRESHOLD, seen["before"][1], seen["before"][2]]
    assert seen["frozen"] > 0
