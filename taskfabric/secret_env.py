"""Keeping taskfabric's credentials out of the environment that user tasks inherit.

A worker runs code the endpoint's users sent; whatever its process environment holds, a task can
read with `os.environ` and return. The endpoint agent's and the managers' own credentials (the
API token a user may have exported to start the endpoint, the registration token managers prove
themselves with, the forwarder's and the tests' broker URLs, the agent's broker password) never
need to reach a task, so each of those processes removes them from its own environment at start
(`scrub_environment`): everything it starts afterwards (providers, managers, workers) inherits
the environment without them. Secrets stay in files of mode 0600 that only the agent and the
managers read (`connection.json`, `blocks/manager.token`).

Removing a variable from `os.environ` does not remove it from `/proc/PID/environ`, which shows
the environment a process was started with and which any process of the same user (a task)
can read. So the long-running commands (`agent run`, `agent supervise`, `manager run`, `endpoint
start`) first re-execute themselves without the secrets (`exec_without_secrets`) when they were
started with any.

What is removed: the variables named in `SECRET_VARIABLES`, every variable starting with one of
`SECRET_PREFIXES`, and every variable whose name or value contains one of the secrets the caller
knows (e.g. the broker password, in whatever variable an operator put it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping

__all__ = [
    "MIN_SECRET_CHARS",
    "SECRET_PREFIXES",
    "SECRET_VARIABLES",
    "exec_without_secrets",
    "scrub_environment",
    "without_secrets",
]

#: taskfabric's own credential variables
SECRET_VARIABLES = frozenset({"TASKFABRIC_TOKEN", "TASKFABRIC_MANAGER_TOKEN"})
#: the forwarder's settings (database and broker URLs with passwords, client secrets) and the
#: test harness's broker and database URLs
SECRET_PREFIXES = ("TASKFABRIC_FORWARDER_", "TASKFABRIC_TEST_")
#: shorter "secrets" are not searched for (an empty or tiny one would match nearly everything)
MIN_SECRET_CHARS = 8


def _is_secret(name: str, value: str, secrets: tuple[str, ...]) -> bool:
    if name in SECRET_VARIABLES or name.startswith(SECRET_PREFIXES):
        return True
    return any(secret in value or secret in name for secret in secrets)


def _searchable(secrets: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(secret for secret in secrets if secret and len(secret) >= MIN_SECRET_CHARS)


def without_secrets(environ: Mapping[str, str], *, secrets: Iterable[str | None] = ()) -> dict[str, str]:
    """A copy of `environ` without taskfabric's credential variables and without any variable
    whose name or value contains one of `secrets`."""
    known = _searchable(secrets)
    return {name: value for name, value in environ.items() if not _is_secret(name, value, known)}


def scrub_environment(
    *, secrets: Iterable[str | None] = (), environ: MutableMapping[str, str] | None = None
) -> list[str]:
    """Remove the variables `without_secrets` would drop from `environ` (default: this process's
    `os.environ`, so every child started afterwards goes without them); returns their names
    (never their values), sorted, for the log."""
    target = os.environ if environ is None else environ
    known = _searchable(secrets)
    removed = sorted(name for name, value in target.items() if _is_secret(name, value, known))
    for name in removed:
        del target[name]
    return removed


def exec_without_secrets(*, secrets: Iterable[str | None] = (), command: list[str] | None = None) -> None:
    """When this process's environment holds a secret (see `without_secrets`), replace the
    process with `python -m taskfabric COMMAND` (default: the command it runs now) in an
    environment without them, so they are not left in `/proc/PID/environ` either. Returns only
    when there was nothing to remove. Call it first thing in a `taskfabric` command, before any
    thread or file is opened."""
    clean = without_secrets(os.environ, secrets=secrets)
    if len(clean) == len(os.environ):
        return
    if command is None and os.path.basename(sys.argv[0]) not in ("taskfabric", "__main__.py"):
        scrub_environment(secrets=secrets)  # run in-process (e.g. by click's test runner): no exec
        return
    sys.stdout.flush()
    sys.stderr.flush()
    arguments = sys.argv[1:] if command is None else command
    os.execve(sys.executable, [sys.executable, "-m", "taskfabric", *arguments], clean)
