"""Single key presses from the terminal, without blocking a refresh loop (`taskfabric top`).

`KeyReader` puts a terminal's input in cbreak mode (keys arrive one at a time, unechoed; Ctrl-C
still interrupts) and restores the saved mode when its `with` block ends, however it ends: a
return, an exception, Ctrl-C. On input that is not a terminal (a pipe, /dev/null) it reads
nothing and changes nothing, so the caller's loop runs the same without a keyboard.
"""

from __future__ import annotations

import os
import select
import termios
import tty
from typing import IO, Any

__all__ = ["KeyReader"]


class KeyReader:
    """Reads keys from `stream` (a terminal) in cbreak mode while the `with` block runs."""

    def __init__(self, stream: IO[Any]) -> None:
        self._fd = stream.fileno()
        self._is_terminal = os.isatty(self._fd)
        self._saved: list[Any] | None = None
        self._hung_up = False

    def __enter__(self) -> KeyReader:
        if self._is_terminal:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def read(self, timeout_s: float) -> str | None:
        """The next key pressed within `timeout_s` seconds, or None. Without a terminal (or once it
        hung up) it sleeps the timeout and returns None, so that a loop does not spin."""
        if not self._is_terminal or self._hung_up:
            select.select([], [], [], max(0.0, timeout_s))
            return None
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout_s))
        if not ready:
            return None
        data = os.read(self._fd, 32)
        if not data:  # the terminal hung up: nothing will ever be typed
            self._hung_up = True
            return None
        return data[:1].decode("utf-8", errors="replace")
