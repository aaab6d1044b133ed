"""Logging helpers: one-time configuration for entry points and a guard for thread/process targets.

Modules log through `logging.getLogger(__name__)` with lazy `%` arguments; only the CLI (or a
test) calls `setup_logging`. Never log payload bytes or tokens.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

__all__ = ["LOG_FORMAT", "run_guarded", "setup_logging", "wrap_with_logs"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s(%(process)d) %(threadName)s %(name)s: %(message)s"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def setup_logging(level: int | str = logging.INFO, *, file: Path | None = None, stream: bool = True) -> None:
    """Configure the root logger once: to stderr and/or a rotating file."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    if stream:
        handlers.append(logging.StreamHandler(sys.stderr))
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(file, maxBytes=20 * 1024 * 1024, backupCount=3))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # pika is chatty at INFO about every channel; keep its warnings
    logging.getLogger("pika").setLevel(max(logging.WARNING, root.level))


def wrap_with_logs(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Log (and re-raise) any exception escaping a thread or process entry point, so a dying
    background thread never dies silently."""

    @functools.wraps(fn)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except Exception:
            logging.getLogger(fn.__module__).exception(
                "%s (pid %d) exited with an exception", fn.__qualname__, os.getpid()
            )
            raise

    return guarded


def run_guarded(main: Callable[[], int], *, what: str, crash_code: int) -> int:
    """Run a process's `main` and return its exit code; an exception escaping it is logged with
    its traceback (in the process's log, once) and becomes `crash_code`, so the process ends with
    a named code and one log record instead of a bare traceback on a stderr nobody reads."""
    try:
        return main()
    except Exception as exc:
        logging.getLogger(getattr(main, "__module__", None) or __name__).exception(
            "%s (pid %d) failed on an unexpected error: %s: %s", what, os.getpid(), type(exc).__name__, exc
        )
        return crash_code
