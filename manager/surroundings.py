"""What a task runs in, inside a worker: its own output files, working directory and environment.

For each task the worker:

- points file descriptors 1 and 2 at two files of its own (unnamed, opened in append mode), so
  everything the task writes — `print`, C extensions, subprocesses it starts — lands there; after
  the task it reads back the last `max_output_bytes` of each (with a `[... N bytes truncated ...]`
  note first when cut) and restores the descriptors;
- creates `<workdir_root>/<task_id>`, makes it the current directory, and removes it afterwards
  (unless `keep_workdirs`);
- sets `TASKFABRIC_TASK_ID` and the variables of the task's resource specification
  (`resource_environment`), and afterwards restores `os.environ`, `sys.path`, `sys.stdout`,
  `sys.stderr` and the current directory exactly as they were, so nothing one task changes leaks
  into the next.
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
    """Redirects this process's fds 1 and 2 to two private files, one task at a time."""

    def __init__(self, max_output_bytes: int, *, directory: str | None = None) -> None:
        self.max_output_bytes = max_output_bytes
        self._fds = (_private_append_file(directory), _private_append_file(directory))

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedOutput]:
        """Capture fds 1 and 2 for the `with` block; the yielded object is filled at its end."""
        output = CapturedOutput()
        _flush_python_streams()
        for fd in self._fds:
            os.ftruncate(fd, 0)
        saved = (os.dup(1), os.dup(2))
        os.dup2(self._fds[0], 1)
        os.dup2(self._fds[1], 2)
        try:
            yield output
        finally:
            _flush_python_streams()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            output.stdout = self._read(self._fds[0])
            output.stderr = self._read(self._fds[1])

    def _read(self, fd: int) -> str:
        total = os.fstat(fd).st_size
        if total == 0:
            return ""
        start = max(0, total - self.max_output_bytes)
        return tail_with_note(os.pread(fd, total - start, start), total)


class TaskSurroundings:
    """The capture, working directory and environment of each task a worker runs."""

    def __init__(self, *, max_output_bytes: int, workdir_root: Path, keep_workdirs: bool = False) -> None:
        self.workdir_root = workdir_root
        self.keep_workdirs = keep_workdirs
        workdir_root.mkdir(parents=True, exist_ok=True)
        self.output = OutputCapture(max_output_bytes)  # in the local temp folder, not a shared one

    def close(self) -> None:
        self.output.close()

    @contextlib.contextmanager
    def around(self, task: Task) -> Iterator[CapturedOutput]:
        """Run the `with` block as `task`: in its own directory, environment and output files."""
        saved_cwd = os.getcwd()
        saved_environ = dict(os.environ)
        saved_path = list(sys.path)
        saved_streams = (sys.stdout, sys.stderr)
        workdir = self.workdir_root / str(task.task_id)
        workdir.mkdir(exist_ok=True)
        os.environ["TASKFABRIC_TASK_ID"] = str(task.task_id)
        if task.resource_specification:
            os.environ.update(resource_environment(task.resource_specification))
        os.chdir(workdir)
        try:
            with self.output.capture() as output:
                yield output
        finally:
            sys.stdout, sys.stderr = saved_streams
            sys.path[:] = saved_path
            os.chdir(saved_cwd)
            _restore_environ(saved_environ)
            if not self.keep_workdirs:
                _remove(workdir)


def _private_append_file(directory: str | None) -> int:
    """An unnamed file (created and unlinked at once) opened for appending: writers that share it
    (the task, its subprocesses) always write at its end, even right after it is truncated."""
    fd, path = tempfile.mkstemp(prefix=".output-", dir=directory)
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            with contextlib.suppress(Exception):  # a closed or replaced stream: nothing to flush
                stream.flush()


def _restore_environ(saved: dict[str, str]) -> None:
    current = os.environ
    for key in [key for key in current if key not in saved]:
        del current[key]
    for key, value in saved.items():
        if current.get(key) != value:
            current[key] = value


def _remove(workdir: Path) -> None:
    try:
        workdir.rmdir()  # the common case: the task left nothing behind
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
