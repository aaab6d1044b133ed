"""Local Unix accounts for multi-user endpoint tests (root only): created with `useradd`, removed
with `userdel -r` on exit, even when the test failed, after killing (by pid) every process left
running as them.

`readable_python(accounts)`: the user endpoint processes run this project's Python as those
accounts; when the checkout cannot be read by them (a CI checkout under a private temporary
folder), it builds a readable copy (hard links where possible) of the source and the virtualenv
and returns the path of its Python; None when the current one works as is.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import psutil

__all__ = ["LocalAccounts", "readable_python"]


class LocalAccounts:
    """`count` fresh accounts named `<prefix><random>-<n>`."""

    def __init__(self, *, prefix: str, count: int) -> None:
        stem = f"{prefix}{secrets.token_hex(3)}"
        self.names = [f"{stem}-{index}" for index in range(count)]
        self._created: list[str] = []
        self.cleanup_paths: list[Path] = []

    def __enter__(self) -> LocalAccounts:
        try:
            for name in self.names:
                subprocess.run(
                    ["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True
                )
                self._created.append(name)
                os.chmod(pwd.getpwnam(name).pw_dir, 0o700)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.remove()

    def remove(self) -> None:
        for name in self._created:
            uid = pwd.getpwnam(name).pw_uid
            for process in psutil.process_iter(["uids"]):
                if process.info["uids"] and process.info["uids"].real == uid:
                    try:
                        process.kill()
                    except psutil.Error:
                        pass
            subprocess.run(["userdel", "--remove", "--force", name], check=False, capture_output=True)
        self._created.clear()
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)


def _runs_as(account: str, python: str) -> bool:
    done = subprocess.run(
        ["runuser", "-u", account, "--", python, "-c", "import ssl"], capture_output=True, cwd="/", check=False
    )
    return done.returncode == 0


def _importable_as(account: str, python: str) -> bool:
    done = subprocess.run(
        ["runuser", "-u", account, "--", python, "-c", "import taskfabric.endpoint_agent.agent"],
        capture_output=True,
        cwd="/",
        check=False,
    )
    return done.returncode == 0


def readable_python(accounts: LocalAccounts) -> str | None:
    """None when every account can import taskfabric with this Python; else a readable copy's."""
    if all(_importable_as(name, sys.executable) for name in accounts.names):
        return None
    checkout = Path(__file__).resolve().parents[2]
    venv = Path(sys.prefix)
    target = Path(tempfile.mkdtemp(prefix="taskfabric-readable-", dir="/var/tmp"))
    accounts.cleanup_paths.append(target)
    copy = target / "checkout"
    _link_tree(checkout, copy, skip={".git", "build", ".venv"})
    venv_copy = copy / venv.relative_to(checkout) if venv.is_relative_to(checkout) else target / "venv"
    _link_tree(venv, venv_copy, skip=set())
    for finder in venv_copy.glob("lib/python*/site-packages/__editable__*finder.py"):
        _rewrite(finder, str(checkout), str(copy))
    base = Path(sys.base_prefix)
    base_python = base / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    copy_base = base != venv and not _runs_as(accounts.names[0], str(base_python))
    if copy_base:  # the interpreter itself is unreadable (e.g. pyenv under /root)
        base_copy = target / "interpreter"
        for part in ("bin", "lib", "include"):
            if (base / part).is_dir():
                _link_tree(base / part, base_copy / part, skip={"site-packages"})
        _rewrite(venv_copy / "pyvenv.cfg", str(base), str(base_copy))
        for entry in (venv_copy / "bin").iterdir():
            if entry.is_symlink() and str(os.readlink(entry)).startswith(str(base)):
                pointed = str(os.readlink(entry)).replace(str(base), str(base_copy), 1)
                entry.unlink()
                entry.symlink_to(pointed)
    python = str(venv_copy / "bin" / Path(sys.executable).name)
    if copy_base:  # its libpython too (the binary's rpath points at the unreadable original)
        wrapper = target / "python"
        wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH={base_copy / "lib"} exec {python} "$@"\n')
        wrapper.chmod(0o755)
        python = str(wrapper)
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o755)
    if not all(_importable_as(name, python) for name in accounts.names):
        raise RuntimeError(f"the readable copy of the project in {target} cannot be imported by the test accounts")
    return python


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text().replace(old, new)
    path.unlink()  # a hard link: never rewrite the original
    path.write_text(text)


def _link_tree(source: Path, target: Path, *, skip: set[str]) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        return [name for name in names if name in skip or name == "__pycache__"]

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, ignore=ignore, copy_function=link)
