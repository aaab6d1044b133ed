"""Whether anything happened in a directory (or to some files) since it was last looked at,
without listing or measuring them.

A worker's directory must be empty when each task starts. Listing it after every task costs more
than a short task (open, getdents, close); on Linux an inotify watch answers "nothing was added"
with one poll of a file descriptor instead. `DirectoryWatch.maybe_touched()` is True when an entry
may have been added or moved in, the directory itself moved, or anything removed from its parent
since the last `watch(path)` / `maybe_touched()`, and always True where inotify is not available
(then the caller lists the directory every time). Files added with `watch_file` count too (a
write to a task's output file), so one poll tells a task that left nothing and wrote nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import sys

__all__ = ["DirectoryWatch"]

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_IN_MODIFY = 0x00000002
_IN_MOVED_TO = 0x00000080
_IN_DELETE = 0x00000200
_IN_CREATE = 0x00000100
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_ONLYDIR = 0x01000000
_MASK = _IN_CREATE | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
#: on the parent: an entry removed. A directory removed while it is still open (as a task's current
#: directory is) sends its own IN_DELETE_SELF only when the last reference goes, the parent's
#: IN_DELETE at once. Other workers' directories in the same parent make false alarms (then the
#: caller lists its directory), which only tasks that leave files cause.
_PARENT_MASK = _IN_DELETE | _IN_ONLYDIR


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


class DirectoryWatch:
    """One directory watched at a time (inotify), or a stand-in that always says "maybe"."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._fd = -1
        self._wd = -1
        self._parent_wd = -1
        if self._libc is not None:
            self._fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        self._poll = select.poll()
        if self._fd >= 0:
            self._poll.register(self._fd, select.POLLIN)

    def watch_file(self, path: str) -> bool:
        """Also count writes to the file at `path` (for as long as it exists, even unlinked:
        call this before unlinking a private file). False if it cannot be watched."""
        if self._libc is None or self._fd < 0:
            return False
        return bool(self._libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_MODIFY) >= 0)

    @property
    def active(self) -> bool:
        """Whether a directory is being watched (False: `maybe_touched` is always True)."""
        return self._wd >= 0

    def watch(self, path: str) -> None:
        """Watch `path` (instead of the directory watched before); nothing counts as touched yet."""
        self._unwatch()
        if self._libc is not None and self._fd >= 0:
            self._parent_wd = self._libc.inotify_add_watch(
                self._fd, os.fsencode(os.path.dirname(path) or "."), _PARENT_MASK
            )
            if self._parent_wd >= 0:
                self._wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _MASK)
        self._drain()

    def maybe_touched(self) -> bool:
        """Whether anything may have been added since the last call (or `watch`); starts afresh."""
        if self._wd < 0:
            return True
        if not self._poll.poll(0):
            return False
        self._drain()
        return True

    def close(self) -> None:
        self._unwatch()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _unwatch(self) -> None:
        for wd in (self._wd, self._parent_wd):
            if wd >= 0 and self._libc is not None:
                self._libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if already gone
        self._wd = self._parent_wd = -1

    def _drain(self) -> None:
        if self._fd < 0:
            return
        while True:
            try:
                if not os.read(self._fd, 65536):
                    return
            except BlockingIOError:
                return
