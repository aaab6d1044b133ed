"""A self-pipe that wakes a poll loop: from another thread (`wake()`) or from a signal
(`signal.set_wakeup_fd(pipe.write_fd)`, so a SIGTERM ends the poll at once instead of after its
timeout). The loop watches `read_fd` in its poll and calls `drain()` when it is readable.

Used by the endpoint agent's loop and the manager's loop; both sleep in exactly one poll.
"""

from __future__ import annotations

import os

__all__ = ["WakePipe"]


class WakePipe:
    """A non-blocking pipe: `wake()` never blocks (a full pipe is already a wake-up)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def wake(self) -> None:
        """Make the poll watching `read_fd` return now (callable from any thread)."""
        try:
            os.write(self.write_fd, b"\0")
        except OSError:  # full (BlockingIOError): already woken; closed: the loop is gone
            pass

    def drain(self) -> None:
        """Read every pending wake-up, so the next poll sleeps again."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
