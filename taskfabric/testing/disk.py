"""Make a folder's files unwritable for a while, even for root: a disk fault for tests.

Tests run as root, where `chmod` stops nothing. The immutable attribute (`chattr +i`, ext2/3/4,
xfs, btrfs) does: the kernel refuses writes to an immutable file, and new files in an immutable
folder, for every user, even through descriptors opened before. SQLite then fails its commits with
`disk I/O error` and works again once the attribute is cleared.

Never mark a file that a process has memory-mapped for writing (SQLite's `-shm` file): a write to
the mapping then kills the process with SIGBUS instead of failing a call. `unwritable` skips
files named `*-shm`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from taskfabric.errors import TaskfabricError

__all__ = ["ImmutableUnsupported", "unwritable"]


class ImmutableUnsupported(TaskfabricError):
    """`chattr +i` is not available here (no e2fsprogs, no CAP_LINUX_IMMUTABLE, or a filesystem
    without the attribute, such as tmpfs or overlayfs)."""


def _chattr(flag: str, paths: list[Path]) -> None:
    if shutil.which("chattr") is None:
        raise ImmutableUnsupported("no `chattr` command (apt-get install e2fsprogs)")
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImmutableUnsupported(f"chattr {flag} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def unwritable(folder: Path, names: list[str] | None = None) -> Iterator[list[Path]]:
    """Make `folder` (no new files in it) and its files `names` (default: all, except `*-shm`)
    immutable for the duration; yields what was marked."""
    files = [folder / name for name in names] if names is not None else sorted(folder.iterdir())
    marked = [folder, *(p for p in files if p.is_file() and not p.name.endswith("-shm"))]
    _chattr("+i", marked)
    try:
        yield marked
    finally:
        _chattr("-i", marked)
