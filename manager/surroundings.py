"""What a task runs in, inside a worker: its own output files, working directory and environment.

For each task the worker:

- has file descriptors 1 and 2 pointing at two files of its own (unnamed, opened in append mode;
  redirected once per batch of tasks and emptied before each task), so everything the task writes
  — `print`, C extensions, subprocesses it starts — lands there; after the task it reads back the
  last `max_output_bytes` of each (with a `[... N bytes truncated ...]` note first when cut);
- gives the task a fresh, empty directory `<workdir_root>/<task_id>` as its current directory, and
  removes it afterwards (unless `keep_workdirs`). On local and shared filesystems alike creating
  and deleting a directory costs up to a millisecond, far more than a short task: so a directory a
  task left empty is renamed to the next task's name (a rename is ~20 us), and to a hidden spare
  name at the end of the batch; only a directory the task wrote into is deleted;
- sets `TASKFABRIC_TASK_ID` and the variables of the task's resource specification
  (`resource_environment`), and afterwards restores `os.environ`, `sys.path`, `sys.stdout`,
  `sys.stderr` and the current directory exactly as they were, so nothing one task changes leaks
  into the next. The environment is compared and restored on CPython's raw bytes mapping behind
  `os.environ` (a C-level copy and compare; decoding every variable cost more than a short task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from taskfabric.protocol import Task, resource_environment

__all__ = ["CapturedOutput", "OutputCapture", "TaskSurroundings", "tail_with_note"]

#: the note put before output that was cut to its last `max_output_bytes`
TRUNCATION_NOTE = "[... {cut} bytes truncated ...]\n"


def tail_with_note(tail: bytes, total_bytes: int) -> str:
    """Text of the last bytes of an output (`tail`) of `total_bytes` in all, with a note first
    saying how many bytes were cut when `tail` is not all of it."""
    text = tail.decode("utf-8", "replace")
    cut = total_bytes - len(tail)
    return TRUNCATION_NOTE.format(cut=cut) + text if cut > 0 else text


@dataclasses.dataclass(slots=True)
class CapturedOutput:
    """A task's output, filled in when its capture ends."""

    stdout: str = ""
    stderr: str = ""


class OutputCapture:
    """Redirects this process's fds 1 and 2 to two private files (`redirected`, once per batch of
    tasks: a dup2 costs more than a short task) and splits what lands there by task (`task`)."""

    def __init__(self, max_output_bytes: int, *, directory: str | None = None) -> None:
        self.max_output_bytes = max_output_bytes
        self._fds = (_private_append_file(directory), _private_append_file(directory))
        self._written = [True, True]  # whether each file may hold output (then it is emptied first)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)

    @contextlib.contextmanager
    def redirected(self) -> Iterator[None]:
        """Point fds 1 and 2 at the capture files for the `with` block (then back)."""
        _flush_python_streams()
        saved = (os.dup(1), os.dup(2))
        os.dup2(self._fds[0], 1)
        os.dup2(self._fds[1], 2)
        try:
            yield
        finally:
            _flush_python_streams()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

    @contextlib.contextmanager
    def task(self) -> Iterator[CapturedOutput]:
        """One task's output, inside `redirected`; the yielded object is filled at the block's end."""
        output = CapturedOutput()
        _flush_python_streams()
        for index, fd in enumerate(self._fds):
            if self._written[index]:
                os.ftruncate(fd, 0)
        try:
            yield output
        finally:
            _flush_python_streams()
            output.stdout = self._read(0)
            output.stderr = self._read(1)

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedOutput]:
        """`redirected` and `task` at once: the output of the `with` block."""
        with self.redirected(), self.task() as output:
            yield output

    def _read(self, index: int) -> str:
        fd = self._fds[index]
        total = os.fstat(fd).st_size
        self._written[index] = total > 0
        if total == 0:
            return ""
        start = max(0, total - self.max_output_bytes)
        return tail_with_note(os.pread(fd, total - start, start), total)


class TaskSurroundings:
    """The capture, working directory and environment of each task a worker runs. Use `batch()`
    around a batch of tasks and `around(task)` around each one."""

    def __init__(self, *, max_output_bytes: int, workdir_root: Path, keep_workdirs: bool = False) -> None:
        self.workdir_root = workdir_root
        self.keep_workdirs = keep_workdirs
        workdir_root.mkdir(parents=True, exist_ok=True)
        self._spare = str(workdir_root / f".spare-{os.getpid()}")
        #: an empty directory ready for the next task: the spare, or the last task's (renamed next)
        self._empty: str | None = None
        self.output = OutputCapture(max_output_bytes)  # in the local temp folder, not a shared one

    def close(self) -> None:
        self.output.close()
        self._park_empty()
        with contextlib.suppress(OSError):
            os.rmdir(self._spare)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Around a batch of tasks: output redirected throughout; the last task's empty directory
        is renamed away at the end."""
        try:
            with self.output.redirected():
                yield
        finally:
            self._park_empty()

    @contextlib.contextmanager
    def around(self, task: Task) -> Iterator[CapturedOutput]:
        """Run the `with` block as `task` (inside `batch`): in its own directory, environment and
        output files."""
        saved_cwd = os.getcwd()
        saved_environ = _raw_environ().copy()
        saved_path = list(sys.path)
        saved_streams = (sys.stdout, sys.stderr)
        workdir = self._enter_workdir(task)
        variables = {"TASKFABRIC_TASK_ID": str(task.task_id)}
        if task.resource_specification:
            variables.update(resource_environment(task.resource_specification))
        os.environ.update(variables)
        try:
            with self.output.task() as output:
                yield output
        finally:
            sys.stdout, sys.stderr = saved_streams
            sys.path[:] = saved_path
            os.chdir(saved_cwd)
            for name in variables:  # ours first: then, for a task that changed nothing, all is equal
                os.environ.pop(name, None)
            _restore_environ(saved_environ)
            self._leave_workdir(workdir)

    def _enter_workdir(self, task: Task) -> str:
        workdir = os.path.join(self.workdir_root, str(task.task_id))
        source, self._empty = self._empty, None
        if source is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._spare)
            source = self._spare
        os.rename(source, workdir)  # the previous task's empty directory becomes this one's
        os.chdir(workdir)
        return workdir

    def _leave_workdir(self, workdir: str) -> None:
        if self.keep_workdirs:
            return
        try:
            with os.scandir(workdir) as entries:
                empty = next(entries, None) is None
        except OSError:  # the task removed its own directory
            return
        if empty:
            self._empty = workdir  # renamed to the next task's name (or back to the spare's)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def _park_empty(self) -> None:
        if self._empty is not None:
            with contextlib.suppress(OSError):
                os.rename(self._empty, self._spare)
            self._empty = None


def _private_append_file(directory: str | None) -> int:
    """An unnamed file (created and unlinked at once) opened for appending: writers that share it
    (the task, its subprocesses) always write at its end, even right after it is truncated."""
    fd, path = tempfile.mkstemp(prefix=".output-", dir=directory)
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or odd stream a task left: nothing to flush
            pass


def _raw_environ() -> dict[Any, Any]:
    """The encoded mapping behind `os.environ` (CPython keeps it in sync with the process's)."""
    return cast(dict[Any, Any], cast(Any, os.environ)._data)


def _restore_environ(saved: dict[Any, Any]) -> None:
    """Make `os.environ` (and the process environment) what `saved` (a raw copy) was."""
    raw = _raw_environ()
    if raw == saved:
        return
    decode = cast(Any, os.environ).decodevalue
    for key in [key for key in raw if key not in saved]:
        del os.environ[decode(key)]
    for key, value in saved.items():
        if raw.get(key) != value:
            os.environ[decode(key)] = decode(value)
