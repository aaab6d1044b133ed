"""The audit log: one JSON line per security-relevant action, for operators and incident review.

Each line: ``{"time", "user", "peer", "action", "object", "outcome"}`` (time: seconds since the
epoch; peer: the client's address, "local" for `taskfabric admin` commands; outcome: "ok" or the
error code of a refusal). Actions recorded:

- ``login`` (a token accepted after a store or identity-provider check: at most once per token per
  auth cache period) and ``login_refused`` (every refused token, with its error code);
- ``create_user``, ``disable_user``, ``enable_user``, ``delete_user``, ``create_token``,
  ``revoke_token`` (by `taskfabric admin`, which writes the same file);
- ``register_endpoint``, ``delete_endpoint``;
- sharing: ``group.create``, ``group.delete``, ``group.add_member``, ``group.remove_member``
  (object ``group:<id>``, with `` user:<name>`` for members; the store's sharing audit has details),
  ``endpoint.access`` (an endpoint's access document replaced; object ``endpoint:<id>``).

Never a token, a hash of one, or payload bytes. The file is 0600 in a 0700 folder (see
`taskfabric.private_files`); each line is one `write` on an `O_APPEND` descriptor, so the forwarder
and admin commands can append to the same file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from taskfabric.errors import ConfigError
from taskfabric.private_files import open_private

__all__ = ["LOCAL_PEER", "AuditLog"]

log = logging.getLogger(__name__)

#: the peer of actions taken on the forwarder's host with `taskfabric admin`
LOCAL_PEER = "local"
OK = "ok"


class AuditLog:
    """Appends audit records to one file (thread-safe). `close()` when done. A file that cannot
    be opened is a `ConfigError` naming `audit_log_file`: the forwarder does not run unaudited."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._fd: int | None = open_private(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {path}: {exc.strerror}", key="audit_log_file") from None

    def record(self, action: str, *, user: str, peer: str, object: str = "", outcome: str = OK) -> None:
        """Append one record. A failing write is logged, never raised: the action it records
        has already happened."""
        line = json.dumps(
            {"time": self._clock(), "user": user, "peer": peer, "action": action, "object": object, "outcome": outcome},
            separators=(",", ":"),
        )
        with self._lock:
            if self._fd is None:
                return
            try:
                os.write(self._fd, (line + "\n").encode())
            except OSError as exc:
                log.error("cannot write the audit log %s: %s", self.path, exc.strerror)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
