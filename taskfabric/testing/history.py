"""A workload of attributable tasks and a history checker, for the fault campaign (tests/faults/).

Each task of a case has a key (`case-n`); its function appends the key to the case's runs file
(`O_APPEND`, one line per run, so re-executions are counted) and returns `(key, run_token)`, the
token unique to that run. So a wrong result (another task's, or none) is detectable, and so is a
second run's result replacing the first one the client was given.

`History` submits through the public `Executor`, then `check()` drains with a bounded wait and
counts, per case:

- accepted: the service gave the task an id (the client saw it accepted);
- refused: the submit failed with a typed error (not accepted; not a loss);
- lost: accepted, and the service no longer knows the task;
- pending: accepted, and no outcome within the bound (the client's future not done);
- reported_twice: the outcome the client got differs from what the service reports afterwards;
- wrong: a result that is not the task's own, or an untyped failure;
- errors: typed failures (e.g. `WorkerLost` after the retries, `DeserializationFailed`); when the
  client's own token stops working its futures fail with `AuthenticationError` (noted as
  auth_errors): that is the client being told, not an outcome of the task, so it is not compared;
- ran_twice: tasks run more than once (allowed: at-least-once), from the runs file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from taskfabric.errors import AuthenticationError, TaskfabricError

__all__ = [
    "CaseCounts",
    "History",
    "Unloadable",
    "attributable_task",
    "kills_its_worker",
]


def attributable_task(key: str, runs_file: str, delay_s: float = 0.0, gate: str | None = None) -> tuple[str, str]:
    """Runs on a worker: wait until the file `gate` exists (if given), record this run, then return
    `(key, a token unique to this run)`. A closed gate keeps a whole workload in flight."""
    while gate is not None and not os.path.exists(gate):
        time.sleep(0.01)
    fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    if delay_s:
        time.sleep(delay_s)
    return key, f"{os.getpid()}-{uuid.uuid4().hex}"


def kills_its_worker(key: str, runs_file: str) -> None:
    """A poison task: records its run, then kills the worker running it (every time)."""
    attributable_task(key, runs_file)
    os.kill(os.getpid(), signal.SIGKILL)


def _error_of(future: concurrent.futures.Future[Any]) -> BaseException | None:
    """The failure of a done future (a cancelled one counts as failed with `CancelledError`)."""
    if future.cancelled():
        return concurrent.futures.CancelledError()
    return future.exception()


def _describe(error: BaseException | None) -> str:
    """An error's class, with the HTTP status for a service error (e.g. `ServiceError/503`)."""
    status = getattr(error, "status", None)
    return type(error).__name__ + (f"/{status}" if status else "")


def _refuse_to_load() -> None:
    raise RuntimeError("this argument cannot be unpickled (a poison payload for the fault campaign)")


class Unloadable:
    """An argument that pickles fine and fails to unpickle on the worker."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _refuse_to_load, ()


@dataclasses.dataclass
class CaseCounts:
    case: str
    accepted: int = 0
    refused: int = 0
    lost: int = 0
    pending: int = 0
    reported_twice: int = 0
    wrong: int = 0
    errors: int = 0
    ran_twice: int = 0
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def violations(self) -> int:
        return self.lost + self.pending + self.reported_twice + self.wrong

    def line(self) -> str:
        counts = (
            f"accepted={self.accepted} refused={self.refused} lost={self.lost} reported_twice={self.reported_twice} "
            f"wrong={self.wrong} pending={self.pending} errors={self.errors} ran_twice={self.ran_twice}"
        )
        extra = " ".join(f"{key}={value}" for key, value in self.notes.items())
        return f"FAULT CASE {self.case}: {counts}" + (f" {extra}" if extra else "")


@dataclasses.dataclass
class _Submitted:
    key: str
    future: concurrent.futures.Future[Any]
    #: what the task must end with: "value" (its own key back) or "error" (a typed failure)
    expect: str


class History:
    """The tasks of one case, submitted through `executor`, and their checking."""

    def __init__(self, case: str, folder: Path) -> None:
        self.case = case
        folder.mkdir(parents=True, exist_ok=True)
        self.runs_file = folder / f"{case}.runs"
        self.runs_file.touch()
        self.submitted: list[_Submitted] = []

    def _key(self) -> str:
        return f"{self.case}-{len(self.submitted)}"

    def submit(
        self, executor: concurrent.futures.Executor, count: int, *, delay_s: float = 0.0, gate: Path | None = None
    ) -> None:
        """Submit `count` attributable tasks; with `gate`, they run once that file exists."""
        for _ in range(count):
            key = self._key()
            extra = (str(gate),) if gate is not None else ()
            future = executor.submit(attributable_task, key, str(self.runs_file), delay_s, *extra)
            self.submitted.append(_Submitted(key, future, "value"))

    def submit_poison(self, executor: concurrent.futures.Executor) -> None:
        """One task whose argument cannot be unpickled and one that kills its worker every time."""
        key = self._key()
        poison: Any = Unloadable()  # where the runs file belongs: the task never starts
        self.submitted.append(_Submitted(key, executor.submit(attributable_task, key, poison), "error"))
        key = self._key()
        self.submitted.append(_Submitted(key, executor.submit(kills_its_worker, key, str(self.runs_file)), "error"))

    def check(self, client: Any, *, bound_s: float) -> CaseCounts:
        """Wait up to `bound_s` for every outcome, then count (see the module docstring)."""
        counts = CaseCounts(self.case)
        concurrent.futures.wait([item.future for item in self.submitted], timeout=bound_s)
        accepted = [item for item in self.submitted if getattr(item.future, "task_id", None) is not None]
        counts.accepted = len(accepted)
        refused = [item for item in self.submitted if item.future.done() and item not in accepted]
        counts.refused = len(refused)
        kinds = Counter(_describe(_error_of(item.future)) for item in refused)
        counts.wrong += sum(1 for item in refused if not isinstance(_error_of(item.future), TaskfabricError))
        if kinds:
            counts.notes["refused_as"] = ",".join(f"{name}:{n}" for name, n in sorted(kinds.items()))
        counts.pending += sum(1 for item in self.submitted if not item.future.done())
        service = client.get_batch_result([item.future.task_id for item in accepted])  # type: ignore[attr-defined]
        for item in accepted:
            task_id = item.future.task_id  # type: ignore[attr-defined]
            if task_id not in service:
                counts.lost += 1
                continue
            if not item.future.done():
                continue
            self._judge(item, service[task_id], counts)
        auth_errors = sum(
            1
            for item in self.submitted
            if item.future.done() and isinstance(_error_of(item.future), AuthenticationError)
        )
        if auth_errors:
            counts.notes["auth_errors"] = auth_errors
        failed = Counter(
            _describe(_error_of(item.future))
            for item in accepted
            if item.future.done() and _error_of(item.future) is not None
        )
        if failed:
            counts.notes["errors_as"] = ",".join(f"{name}:{n}" for name, n in sorted(failed.items()))
        runs = Counter(self.runs_file.read_text().split())
        counts.ran_twice = sum(1 for item in self.submitted if runs[item.key] > 1)
        return counts

    @staticmethod
    def _judge(item: _Submitted, stored: dict[str, Any], counts: CaseCounts) -> None:
        error = _error_of(item.future)
        if isinstance(error, AuthenticationError):
            return
        if error is not None:
            if not isinstance(error, TaskfabricError) or item.expect != "error":
                counts.wrong += 1
            else:
                counts.errors += 1
            if stored.get("pending") or "exception" not in stored:
                counts.reported_twice += 1  # the client got a failure, the service says otherwise
            return
        value = item.future.result()
        if item.expect != "value" or not isinstance(value, tuple) or value[0] != item.key:
            counts.wrong += 1
        if stored.get("pending") or stored.get("result") != value:
            counts.reported_twice += 1
