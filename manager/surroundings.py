"""What a task runs in, inside a worker: its own output files, a clean working directory and environment.

For each task the worker:

- has file descriptors 1 and 2 pointing at two files of its own (unnamed, opened in append mode;
  redirected once per batch of tasks and emptied before each task), so everything the task writes
  — `print`, C extensions, subprocesses it starts — lands there; after the task it reads back the
  last `max_output_bytes` of each (with a `[... N bytes truncated ...]` note first when cut);
- runs the task in the worker's own directory, `<workdir_root>/worker-<host>-<pid>`, which is
  empty when each task starts. A task that leaves files there has its directory renamed to
  `<workdir_root>/<task id>` at its end and removed (kept with `keep_workdirs`), and the worker
  makes a fresh one. Creating, renaming and deleting directories costs far more than a short
  task (up to milliseconds on shared filesystems), so a task that writes nothing costs one poll
  of an inotify watch on Linux (`dirwatch.py`), or one listing of the empty folder elsewhere;
- sets `TASKFABRIC_TASK_ID`, `TASKFABRIC_TASK_USER` (the submitting username, unset after the
  task) and the variables of the task's resource specification
  (`resource_environment`), and afterwards restores `os.environ`, `sys.path`, `sys.stdout`,
  `sys.stderr` and the current directory exactly as they were, so nothing one task changes leaks
  into the next. Redirecting the fds and entering the directory happen once per worker
  (`active`), not per task or batch. The environment is compared and restored on CPython's raw bytes mapping behind
  `os.environ` (a C-level copy and compare; decoding every variable cost more than a short task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from taskfabric.manager.dirwatch import DirectoryWatch
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

    def __init__(
        self, max_output_bytes: int, *, directory: str | None = None, watch: DirectoryWatch | None = None
    ) -> None:
        self.max_output_bytes = max_output_bytes
        (out, out_watched), (err, err_watched) = (_private_append_file(directory, watch) for _ in range(2))
        self._fds = (out, err)
        #: whether the watch sees every write to both files (else they are measured after each task)
        self._watched = out_watched and err_watched
        self._written = [True, True]  # whether each file may hold output (then it is emptied first)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)

    @contextlib.contextmanager
    def redirected(self) -> Iterator[None]:
        """Point fds 1 and 2 at the capture files for the `with` block (then back)."""
        _flush_python_streams()
        _line_buffer_stdout()
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

    def start_task(self) -> CapturedOutput:
        """Empty the files for the next task (inside `redirected`); `end_task` reads its output.
        (The Python streams were flushed when the last task ended; the worker prints nothing
        between tasks.)"""
        for index, fd in enumerate(self._fds):
            if self._written[index]:
                os.ftruncate(fd, 0)
        return CapturedOutput()

    def end_task(self, output: CapturedOutput, *, written: bool = True) -> None:
        """Fill in `output` (after `flush_streams`); `written=False`: the watch saw no write."""
        if written or not self._watched:
            output.stdout = self._read(0)
            output.stderr = self._read(1)

    @staticmethod
    def flush_streams() -> None:
        _flush_python_streams()

    @contextlib.contextmanager
    def task(self) -> Iterator[CapturedOutput]:
        """One task's output, inside `redirected`; the yielded object is filled at the block's end."""
        output = self.start_task()
        try:
            yield output
        finally:
            self.flush_streams()
            self.end_task(output)

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedOutput]:
        """`redirected` and `task` at once: the output of the `with` block."""
        with self.redirected(), self.task() as output:
            yield output

    def _read(self, index: int) -> str:
        fd = self._fds[index]
        total = os.lseek(fd, 0, os.SEEK_END)  # the size; cheaper than fstat (writes append anyway)
        self._written[index] = total > 0
        if total == 0:
            return ""
        start = max(0, total - self.max_output_bytes)
        return tail_with_note(os.pread(fd, total - start, start), total)


@dataclasses.dataclass(slots=True)
class _TaskScope:
    """What `TaskSurroundings.enter` saved, for `leave` to restore."""

    task: Task
    environ: dict[Any, Any]
    path: list[str]
    streams: tuple[Any, Any]
    output: CapturedOutput


class TaskSurroundings:
    """The capture, working directory and environment of each task a worker runs. Use `active()`
    around a worker's whole run and `enter(task)` / `leave(scope)` (or `around(task)`) around each
    task. Between tasks the process keeps the last task's `TASKFABRIC_*` variables (each task sets
    its own) and the worker's directory; `active()` restores everything at its end."""

    def __init__(self, *, max_output_bytes: int, workdir_root: Path, keep_workdirs: bool = False) -> None:
        self.workdir_root = workdir_root
        self.keep_workdirs = keep_workdirs
        workdir_root.mkdir(parents=True, exist_ok=True)
        #: the worker's directory: every task starts in it, empty
        self.workdir = str(workdir_root / f"worker-{socket.gethostname()}-{os.getpid()}")
        self._workdir_fd: int | None = None
        #: tells, without listing it, whether a task may have left something in the directory
        self._watch = DirectoryWatch()
        #: the environment before any task variable was set
        self._base_environ: dict[Any, Any] = {}
        #: the resource variables the last task got (beside TASKFABRIC_TASK_ID)
        self._resource_variables: dict[str, str] = {}
        # in the local temp folder, not a shared one; writes to them show on the watch
        self.output = OutputCapture(max_output_bytes, watch=self._watch)

    def close(self) -> None:
        self.output.close()
        self._watch.close()
        self._close_workdir()
        with contextlib.suppress(OSError):
            os.rmdir(self.workdir)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Around the tasks a worker runs: output redirected and the worker's directory current
        throughout; the process's directory and environment are restored at the end."""
        saved_cwd = os.getcwd()
        self._base_environ = _RAW_ENVIRON.copy()
        self._resource_variables = {}
        try:
            self._open_workdir()
            with self.output.redirected():
                yield
        finally:
            os.chdir(saved_cwd)
            _restore_environ(self._base_environ)

    @contextlib.contextmanager
    def around(self, task: Task) -> Iterator[CapturedOutput]:
        """Run the `with` block as `task` (inside `active`)."""
        scope = self.enter(task)
        try:
            yield scope.output
        finally:
            self.leave(scope)

    def enter(self, task: Task) -> _TaskScope:
        """Set up `task`'s surroundings (inside `active`); `leave` ends them."""
        if task.resource_specification or self._resource_variables:  # rare: a resource specification
            variables = resource_environment(task.resource_specification)
            if variables != self._resource_variables:  # the last task's variables go first
                _restore_environ(self._base_environ)
                os.environ.update(variables)
                self._resource_variables = variables
        # os.environ["TASKFABRIC_TASK_ID"] = ..., without its per-call encoding helpers
        task_id = str(task.task_id).encode()
        os.putenv(_TASK_ID_VARIABLE, task_id)
        _RAW_ENVIRON[_TASK_ID_VARIABLE] = task_id
        if task.user:  # who submitted it (endpoint sharing), for the task's own logging
            user = task.user.encode()
            os.putenv(_TASK_USER_VARIABLE, user)
            _RAW_ENVIRON[_TASK_USER_VARIABLE] = user
        output = self.output.start_task()
        return _TaskScope(task, _RAW_ENVIRON.copy(), list(sys.path), (sys.stdout, sys.stderr), output)

    def leave(self, scope: _TaskScope) -> CapturedOutput:
        """Restore what the task may have changed and fill in its output."""
        self.output.flush_streams()
        touched = self._watch.maybe_touched()  # one poll: no output written, no file left?
        self.output.end_task(scope.output, written=touched)
        sys.stdout, sys.stderr = scope.streams
        if sys.path != scope.path:
            sys.path[:] = scope.path
        _restore_environ(scope.environ)
        if _TASK_USER_VARIABLE in _RAW_ENVIRON:  # the next task may be another user's, or nobody's
            del _RAW_ENVIRON[_TASK_USER_VARIABLE]
            os.unsetenv(_TASK_USER_VARIABLE)
        self._tidy_workdir(scope.task, touched=touched)
        return scope.output

    def _open_workdir(self) -> None:
        if self._workdir_fd is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.workdir, 0o700)
            self._workdir_fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY)
            self._watch.watch(self.workdir)
        os.fchdir(self._workdir_fd)

    def _close_workdir(self) -> None:
        if self._workdir_fd is not None:
            os.close(self._workdir_fd)
            self._workdir_fd = None

    def _tidy_workdir(self, task: Task, *, touched: bool) -> None:
        """Back into the worker's directory, emptied if the task left anything in it
        (`touched`: the watch saw activity, or cannot watch)."""
        if not touched:
            assert self._workdir_fd is not None
            os.fchdir(self._workdir_fd)
            return
        try:
            with os.scandir(self.workdir) as entries:
                empty = next(entries, None) is None
        except OSError:  # the task removed the directory: make a new one
            empty = False
        if not empty:
            self._set_aside(task)
        assert self._workdir_fd is not None
        os.fchdir(self._workdir_fd)

    def _set_aside(self, task: Task) -> None:
        """The task's files stay in `<workdir_root>/<task id>` (kept or removed); a fresh directory
        replaces it."""
        self._close_workdir()
        left = os.path.join(self.workdir_root, str(task.task_id))
        try:
            os.rename(self.workdir, left)
        except FileNotFoundError:
            left = ""
        if left and not self.keep_workdirs:
            shutil.rmtree(left, ignore_errors=True)
        self._open_workdir()


def _private_append_file(directory: str | None, watch: DirectoryWatch | None) -> tuple[int, bool]:
    """An unnamed file (created and unlinked at once, watched first) opened for appending: writers
    that share it (the task, its subprocesses) always write at its end, even right after it is
    truncated."""
    fd, path = tempfile.mkstemp(prefix=".output-", dir=directory)
    watched = watch is not None and watch.watch_file(path)
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd, watched


def _line_buffer_stdout() -> None:
    """Python block-buffers stdout on a file: a task's `print` would land after the output of a
    subprocess it runs next. Line buffering keeps the order a terminal shows (stderr already is)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(line_buffering=True)
        except Exception:  # a stream a task left that cannot be reconfigured: keep it as it is
            pass


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or odd stream a task left: nothing to flush
            pass


_TASK_ID_VARIABLE = b"TASKFABRIC_TASK_ID"
#: the submitting user's name (set only while a task that names one runs)
_TASK_USER_VARIABLE = b"TASKFABRIC_TASK_USER"
#: the encoded mapping behind `os.environ` (CPython keeps it in sync with the process's, in place)
_RAW_ENVIRON: dict[Any, Any] = cast(Any, os.environ)._data


def _restore_environ(saved: dict[Any, Any]) -> None:
    """Make `os.environ` (and the process environment) what `saved` (a raw copy) was."""
    raw = _RAW_ENVIRON
    if raw == saved:
        return
    decode = cast(Any, os.environ).decodevalue
    for key in [key for key in raw if key not in saved]:
        del os.environ[decode(key)]
    for key, value in saved.items():
        if raw.get(key) != value:
            os.environ[decode(key)] = decode(value)
