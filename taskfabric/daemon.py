"""Start a process that outlives its starter (an endpoint agent, the dev forwarder).

A shell in a new session starts the command in the background and exits at once, printing the
command's pid; the daemon is then a child of init, not of us, so nothing is left to reap here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from taskfabric.errors import TaskfabricError
from taskfabric.private_files import open_private

__all__ = ["spawn_detached"]


def spawn_detached(
    argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Run `argv` in the background with stdout and stderr appended to `log` (made 0600 first:
    it is a log); return its pid."""
    os.close(open_private(log, os.O_WRONLY | os.O_APPEND))
    launcher = subprocess.run(
        ["sh", "-c", 'log="$1"; shift; nohup "$@" >>"$log" 2>&1 </dev/null & echo $!', "sh", str(log), *argv],
        env=dict(env) if env is not None else dict(os.environ),
        cwd=cwd,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=False,
    )
    try:
        return int(launcher.stdout.strip())
    except ValueError:
        raise TaskfabricError(f"could not start {argv[0]}: {launcher.stderr.strip() or 'no pid'}") from None
