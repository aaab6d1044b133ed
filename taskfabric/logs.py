"""Logging helpers: one-time configuration for entry points and a guard for thread/process targets.

Modules log through `logging.getLogger(__name__)` with lazy `%` arguments; only the CLI (or a
test) calls `setup_logging`. Never log payload bytes or tokens.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from taskfabric.private_files import PrivateRotatingFileHandler

__all__ = ["LOG_FORMAT", "RedactSecrets", "redact_secrets", "run_guarded", "setup_logging", "wrap_with_logs"]

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s(%(process)d) %(threadName)s %(name)s: %(message)s"

#: what a secret looks like in a log line: our local tokens anywhere, and the value of a
#: token-like query parameter (uvicorn logs every WebSocket handshake's path with its query string)
_SECRET_PATTERNS = (
    re.compile(r"tf_[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?i)((?:access_)?token|secret|password|api_key)=[^&\s\"']+"),
    re.compile(r"(?i)(bearer) [^\s\"']+"),  # any bearer token (Globus tokens are not ours)
)
_REDACTED = "[redacted]"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def redact_secrets(text: str) -> str:
    """`text` with local tokens and token-like query parameters' values replaced by [redacted]."""
    text = _SECRET_PATTERNS[0].sub(_REDACTED, text)
    text = _SECRET_PATTERNS[1].sub(lambda match: f"{match.group(1)}={_REDACTED}", text)
    return _SECRET_PATTERNS[2].sub(lambda match: f"{match.group(1)} {_REDACTED}", text)


class RedactSecrets(logging.Filter):
    """A handler filter that redacts secrets from each record's message (the last line of
    defence: code never logs tokens on purpose, but libraries log URLs, e.g. uvicorn's
    `"WebSocket /v1/results/ws?token=..."` lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


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
        handlers.append(PrivateRotatingFileHandler(file, maxBytes=20 * 1024 * 1024, backupCount=3))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactSecrets())
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
