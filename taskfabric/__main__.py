"""`python -m taskfabric ...` is the `taskfabric` command (used where the console script may not be on PATH)."""

from __future__ import annotations

from taskfabric.cli import main

main()
