"""Where taskfabric keeps per-user files (config, endpoint state, a private broker node)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["taskfabric_home"]


def taskfabric_home() -> Path:
    """`$TASKFABRIC_HOME`, else `~/.taskfabric`."""
    configured = os.environ.get("TASKFABRIC_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".taskfabric"
