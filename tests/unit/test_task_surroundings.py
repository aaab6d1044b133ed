"""What a task runs in (manager/surroundings.py): output capture of fds 1 and 2 (subprocesses
included) cut to its end with a note, a working directory per task, and an environment restored
after each task. Also how a worker reports task starts (worker.ResultWriter)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from taskfabric.manager.frames import FrameReader
from taskfabric.manager.surroundings import OutputCapture, TaskSurroundings, tail_with_note
from taskfabric.manager.worker import ResultWriter
from taskfabric.protocol import Result, ResultBatch, Task, TaskEvents, TaskStarted, unpack
from taskfabric.testing import wait_until


def _task(**fields: object) -> Task:
    return Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"", **fields)  # type: ignore[arg-type]


# --- the truncation helper ----------------------------------------------------------------


def test_tail_with_note_keeps_whole_output_untouched() -> None:
    assert tail_with_note(b"hello\n", 6) == "hello\n"
    assert tail_with_note(b"", 0) == ""


def test_tail_with_note_says_how_much_was_cut() -> None:
    assert tail_with_note(b"world\n", 12351) == "[... 12345 bytes truncated ...]\nworld\n"


def test_tail_with_note_survives_a_cut_inside_a_character() -> None:
    text = tail_with_note("é!".encode()[1:], 3)  # the cut split the two-byte é
    assert text == "[... 1 bytes truncated ...]\n\ufffd!"


# --- capturing fds 1 and 2 ----------------------------------------------------------------


def test_capture_takes_both_fds_including_a_subprocess_and_restores_them() -> None:
    capture = OutputCapture(1000)
    try:
        with capture.capture() as output:
            os.write(1, b"direct out\n")
            os.write(2, b"direct err\n")
            subprocess.run(
                [sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"],
                check=True,
            )
        assert output.stdout == "direct out\nchild out\n"
        assert output.stderr == "direct err\nchild err\n"
        with capture.capture() as second:  # the next task starts from empty files
            os.write(1, b"next\n")
        assert (second.stdout, second.stderr) == ("next\n", "")
    finally:
        capture.close()


def test_capture_keeps_the_end_of_long_output_with_a_note() -> None:
    capture = OutputCapture(10)
    try:
        with capture.capture() as output:
            os.write(1, b"0123456789" * 5 + b"TAIL")
        assert output.stdout == "[... 44 bytes truncated ...]\n456789TAIL"
    finally:
        capture.close()


# --- working directory and environment ----------------------------------------------------


def test_every_task_starts_in_an_empty_directory_and_what_it_leaves_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "tasks"
    surroundings = TaskSurroundings(max_output_bytes=100, workdir_root=root)
    before = os.getcwd()
    tasks = (_task(), _task(), _task(), _task())
    try:
        with surroundings.active():
            for index, task in enumerate(tasks):
                with surroundings.around(task):
                    assert os.getcwd() == surroundings.workdir
                    assert os.listdir(".") == []  # empty, even after a task that wrote
                    if index == 0:
                        Path("scratch.txt").write_text("left behind")
                    if index == 1:
                        os.mkdir("sub")
                        os.chdir("sub")  # the next task starts in the worker's directory again
                    if index == 2:
                        os.rmdir(surroundings.workdir)  # even this leaves the next task a directory
                assert os.getcwd() == surroundings.workdir
                assert not (root / str(task.task_id)).exists()  # what it left is deleted at once
        assert os.getcwd() == before
        assert Path(surroundings.workdir).parent == root
    finally:
        surroundings.close()
    assert list(root.iterdir()) == []


def test_what_a_task_leaves_is_kept_under_its_id_when_configured(tmp_path: Path) -> None:
    surroundings = TaskSurroundings(max_output_bytes=100, workdir_root=tmp_path, keep_workdirs=True)
    first, second = _task(), _task()
    try:
        with surroundings.active():
            with surroundings.around(first):
                Path("result.dat").write_text("kept")
            with surroundings.around(second):
                assert os.listdir(".") == []
    finally:
        surroundings.close()
    assert (tmp_path / str(first.task_id) / "result.dat").read_text() == "kept"
    assert not (tmp_path / str(second.task_id)).exists()  # it left nothing to keep


def test_output_is_split_by_task_within_a_batch(tmp_path: Path) -> None:
    surroundings = TaskSurroundings(max_output_bytes=100, workdir_root=tmp_path)
    try:
        with surroundings.active():
            with surroundings.around(_task()) as first:
                os.write(1, b"one\n")
            with surroundings.around(_task()) as second:
                os.write(2, b"two\n")
            with surroundings.around(_task()) as third:
                pass
    finally:
        surroundings.close()
    assert (first.stdout, first.stderr) == ("one\n", "")
    assert (second.stdout, second.stderr) == ("", "two\n")
    assert (third.stdout, third.stderr) == ("", "")


def test_environment_is_set_for_the_task_and_restored_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEPT_VALUE", "original")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    surroundings = TaskSurroundings(max_output_bytes=100, workdir_root=tmp_path)
    task = _task(resource_specification={"num_cores": 3, "memory_mb": 512})
    path_before = list(sys.path)
    try:
        with surroundings.active():
            with surroundings.around(task):
                assert os.environ["TASKFABRIC_TASK_ID"] == str(task.task_id)
                assert os.environ["TASKFABRIC_NUM_CORES"] == "3" and os.environ["OMP_NUM_THREADS"] == "3"
                assert os.environ["TASKFABRIC_MEMORY_MB"] == "512"
                os.environ["SET_BY_TASK"] = "leak"
                os.environ["KEPT_VALUE"] = "changed"
                sys.path.insert(0, "/nowhere")
            assert "SET_BY_TASK" not in os.environ and os.environ["KEPT_VALUE"] == "original"
            assert sys.path == path_before
            plain = _task()
            with surroundings.around(plain):  # the last task's resource variables are gone
                assert os.environ["TASKFABRIC_TASK_ID"] == str(plain.task_id)
                assert "OMP_NUM_THREADS" not in os.environ and "TASKFABRIC_NUM_CORES" not in os.environ
            with surroundings.around(task):  # and come back for a task that has them
                assert os.environ["OMP_NUM_THREADS"] == "3"
        assert "SET_BY_TASK" not in os.environ and "TASKFABRIC_TASK_ID" not in os.environ
        assert "OMP_NUM_THREADS" not in os.environ and "TASKFABRIC_NUM_CORES" not in os.environ
        assert os.environ["KEPT_VALUE"] == "original"
        assert sys.path == path_before
    finally:
        surroundings.close()


def test_the_submitting_user_is_in_the_task_environment_only_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKFABRIC_TASK_USER", raising=False)
    surroundings = TaskSurroundings(max_output_bytes=100, workdir_root=tmp_path)
    try:
        with surroundings.active():
            with surroundings.around(dataclasses.replace(_task(), user="bob")):
                assert os.environ["TASKFABRIC_TASK_USER"] == "bob"
            assert "TASKFABRIC_TASK_USER" not in os.environ
            with surroundings.around(_task()):  # a task naming nobody sees no one's name
                assert "TASKFABRIC_TASK_USER" not in os.environ
            with surroundings.around(dataclasses.replace(_task(), user="carol")):
                del os.environ["TASKFABRIC_TASK_USER"]  # a task may drop it: still gone after
            assert "TASKFABRIC_TASK_USER" not in os.environ
    finally:
        surroundings.close()


# --- task starts from the worker ----------------------------------------------------------


def _frames(fd: int) -> list[object]:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 1 << 20)
    except BlockingIOError:
        return []
    return [unpack(frame) for frame in FrameReader().feed(data)]


def test_a_start_is_reported_once_its_task_has_run_a_while() -> None:
    read_fd, write_fd = os.pipe()
    writer = ResultWriter(write_fd, flush_after_s=3600, report_start_after_s=0.0)  # the thread writes it
    try:
        slow = uuid.uuid4()
        writer.started(slow, 1.0)
        frames = wait_until(lambda: _frames(read_fd), timeout_s=10, what="the start written")
        assert frames == [TaskEvents(started=[TaskStarted(task_id=slow, started_at=1.0)])]
        writer.add(Result(task_id=slow, ok=True, value=b"1"))
        writer.flush()
        (frame,) = _frames(read_fd)
        assert isinstance(frame, ResultBatch) and [r.task_id for r in frame.results] == [slow]
    finally:
        writer.close()
        os.close(read_fd)
        os.close(write_fd)


def test_a_task_that_finishes_before_its_start_is_due_is_reported_by_its_result_alone() -> None:
    read_fd, write_fd = os.pipe()
    writer = ResultWriter(write_fd, flush_after_s=3600, report_start_after_s=3600)
    try:
        fast = uuid.uuid4()
        writer.started(fast, 2.0)
        writer.flush()
        assert _frames(read_fd) == []  # not due yet
        writer.add(Result(task_id=fast, ok=True, value=b"2"))
        writer.flush()
        (frame,) = _frames(read_fd)
        assert isinstance(frame, ResultBatch) and [r.task_id for r in frame.results] == [fast]
    finally:
        writer.close()
        os.close(read_fd)
        os.close(write_fd)


# --- the directory watch ------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's; elsewhere the watch says 'maybe'")
def test_the_directory_watch_sees_entries_added_and_the_directory_removed(tmp_path: Path) -> None:
    from taskfabric.manager.dirwatch import DirectoryWatch

    watched = tmp_path / "w"
    watched.mkdir()
    watch = DirectoryWatch()
    try:
        watch.watch(str(watched))
        assert watch.active and not watch.maybe_touched()
        (watched / "file").write_text("x")
        assert watch.maybe_touched() and not watch.maybe_touched()  # each call starts afresh
        (watched / "file").unlink()  # removing an entry leaves nothing behind: no alarm needed
        assert not watch.maybe_touched()
        (tmp_path / "outside").write_text("y")
        os.rename(tmp_path / "outside", watched / "moved-in")
        assert watch.maybe_touched()
        (watched / "moved-in").unlink()
        held = os.open(watched, os.O_RDONLY | os.O_DIRECTORY)  # as a task's current directory holds it
        try:
            watched.rmdir()
            assert watch.maybe_touched()
        finally:
            os.close(held)
    finally:
        watch.close()


def test_without_a_watch_every_check_says_maybe(tmp_path: Path) -> None:
    from taskfabric.manager.dirwatch import DirectoryWatch

    watch = DirectoryWatch()
    try:
        watch.watch(str(tmp_path / "does-not-exist"))  # inotify refuses: the stand-in answers
        assert not watch.active
        assert watch.maybe_touched() and watch.maybe_touched()
    finally:
        watch.close()


def test_output_written_by_a_subprocess_is_seen_by_the_watch(tmp_path: Path) -> None:
    """With the inotify watch, a task's output is read only when a write was seen: a child
    process's writes must count."""
    surroundings = TaskSurroundings(max_output_bytes=100, workdir_root=tmp_path)
    try:
        with surroundings.active():
            with surroundings.around(_task()) as quiet:
                pass
            with surroundings.around(_task()) as child:
                subprocess.run([sys.executable, "-c", "import os; os.write(2, b'from the child')"], check=True)
            with surroundings.around(_task()) as after:
                pass
    finally:
        surroundings.close()
    assert (quiet.stdout, quiet.stderr) == ("", "")
    assert (child.stdout, child.stderr) == ("", "from the child")
    assert (after.stdout, after.stderr) == ("", "")
