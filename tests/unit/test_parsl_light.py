"""The agent imports Parsl's providers without Parsl's workflow engine, and code that wants all of
Parsl still gets it (in a fresh interpreter: the test process may have Parsl imported already)."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
import taskfabric.endpoint_agent.agent
import taskfabric.endpoint_agent.providers
print("engine loaded at start:", "parsl.dataflow.dflow" in sys.modules)
import parsl.providers
print("provider:", parsl.providers.LocalProvider.__name__)
from parsl import Config
print("full parsl:", Config.__name__, bool(parsl.__version__), "parsl.dataflow.dflow" in sys.modules)
"""


def test_the_agent_starts_without_parsls_engine_and_parsl_still_loads_in_full_on_demand() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == [
        "engine loaded at start: False",
        "provider: LocalProvider",
        "full parsl: Config True True",
    ]
