"""Files and folders only their owner may read, whatever the process's umask.

Every file holding a secret (the store, tokens, credentials, logs, the audit log) is made through
these helpers: folders 0700, files 0600. `os.open(..., 0o600)` alone is not enough: the mode
applies only when the file is created (an existing file keeps its mode) and is masked by the umask;
so the mode is set with `fchmod` on the open descriptor every time.
"""

from __future__ import annotations

import logging.handlers
import os
import stat
from pathlib import Path

__all__ = ["PrivateRotatingFileHandler", "open_private", "private_folder", "write_private"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path) -> Path:
    """Create `path` (and missing parents) 0700. An existing `path` is made 0700 too when it is
    this user's and not a shared folder (sticky, like /tmp): a store put in /tmp must not lock
    everyone else out of /tmp; its files are private all the same."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    for folder in missing:
        os.chmod(folder, FOLDER_MODE)
    if path not in missing:
        status = os.stat(path)
        if status.st_uid == os.getuid() and not status.st_mode & stat.S_ISVTX:
            os.chmod(path, FOLDER_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """`os.open` a file (in a private folder) and make it 0600 even if it existed; returns the fd."""
    private_folder(path.parent)
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, text: str) -> None:
    """Replace the contents of `path` with `text`, the file being 0600 (also when it existed)."""
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file made 0600 in a 0700 folder, the rotated files too (logs name users,
    endpoints and peers)."""

    def _open(self):  # type: ignore[no-untyped-def]  # the base class's signature
        fd = open_private(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)
