"""Privilege, in one small module: the checks a multi-user parent makes of itself, the folders it
makes for an account, and the one place a process is started as another account.

A user endpoint process is started with `subprocess.Popen(user=, group=, extra_groups=)`: in the
child, before exec, CPython calls setgroups (the account's groups, as initgroups would find them:
`os.getgrouplist`), setgid, then setuid, in that order, so the process holds no root group and
cannot regain root. Its environment is built from nothing: HOME, USER, LOGNAME, SHELL of the
account, a fixed PATH and LANG; nothing of the parent's (its broker URL, its API token) is passed.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "LocalAccount",
    "create_account_folder",
    "read_account_file",
    "require_privilege",
    "start_as",
    "write_account_file",
]

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True, slots=True)
class LocalAccount:
    name: str
    uid: int
    gid: int
    home: Path
    shell: str

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> LocalAccount:
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), entry.pw_shell or "/bin/sh")

    def environment(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
            "PATH": _PATH,
            "LANG": "C.UTF-8",
        }


def require_privilege() -> None:
    """Raise `PermissionError` with a clear message unless this process may switch accounts."""
    if os.geteuid() == 0:
        return
    if _has_setuid_capabilities():
        return
    raise PermissionError(
        "a multi_user endpoint must be started by root (or by a service account with the CAP_SETUID, CAP_SETGID "
        f"and CAP_CHOWN capabilities): this process runs as uid {os.geteuid()}. Start it with sudo, or set "
        "multi_user: false"
    )


def _has_setuid_capabilities() -> bool:
    """CAP_SETGID (6), CAP_SETUID (7) and CAP_CHOWN (0) in the effective set (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return all(effective & (1 << bit) for bit in (0, 6, 7))
    except (OSError, ValueError):
        return False
    return False


def start_as(
    account: LocalAccount, command: Sequence[str], *, cwd: Path, log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` as `account` (see the module docstring), in its own session, its output
    appended to `log_file` (opened as the account would: the file is the account's)."""
    groups = os.getgrouplist(account.name, account.gid)
    # never through a link the account planted, nor into a FIFO (root would block) or a hard link
    # to another file (root would chown it to the account); the file is the account's
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
    owner = 0  # a file it creates is root's until the fchown below
    fd_dir = _open_account_dir(log_file.parent, account)
    try:
        try:
            fd = os.open(log_file.name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd_dir)
        except FileExistsError:
            fd, owner = os.open(log_file.name, flags, dir_fd=fd_dir), account.uid
    except OSError as exc:  # ENXIO: a FIFO without a reader; ELOOP: a symbolic link
        raise PermissionError(f"{log_file}: not a file the parent writes to ({exc.strerror})") from None
    finally:
        os.close(fd_dir)
    try:
        _require_plain_file(fd, log_file, owner)
        os.fchown(fd, account.uid, account.gid)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "ab") as output:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**account.environment(), **(env or {})},
            user=account.uid,
            group=account.gid,
            extra_groups=groups,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def create_account_folder(base: Path, parts: Sequence[str], account: LocalAccount) -> Path:
    """Make `base/parts...` (each part a plain name), the parts created for `account` (mode 0700);
    never follows a symbolic link below `base` (the account owns those folders and could plant
    one to make root write elsewhere). `base` must exist and be trusted (a home from the password
    database, or the administrator's user_endpoints_root)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if not part or "/" in part or part in (".", ".."):
                raise ValueError(f"not a plain folder name: {part!r}")
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            if created:
                os.fchown(fd, account.uid, account.gid)
        info = os.fstat(fd)
        if info.st_uid != account.uid:
            os.fchown(fd, account.uid, account.gid)
        os.fchmod(fd, 0o700)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(str(base.joinpath(*parts)))
    finally:
        os.close(fd)
    return base.joinpath(*parts)


def read_account_file(path: Path, *, max_bytes: int = 4096) -> str:
    """At most `max_bytes` of a small file in a folder the account owns, read as root: never
    through a link, never blocking on a FIFO or reading a device (`OSError` for anything but a
    regular file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        return os.read(fd, max_bytes).decode(errors="replace")
    finally:
        os.close(fd)


def _open_account_dir(folder: Path, account: LocalAccount) -> int:
    """A descriptor of `folder`, which must be a folder of `account`. Its path runs through
    folders the account owns, so the account may have swapped one for a link to someone else's
    folder (another user's user endpoint, a system folder) after `create_account_folder` checked
    it: root then never writes there, as the folder it reaches is not the account's."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    if os.fstat(fd).st_uid != account.uid:
        os.close(fd)
        raise PermissionError(f"{folder}: not a folder of {account.name} (a link planted in its path?)")
    return fd


def _require_plain_file(fd: int, path: Path, owner: int) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != owner:
        raise PermissionError(f"{path}: not a plain file of uid {owner} (a FIFO, a device, a hard link?)")


def write_account_file(folder: Path, name: str, text: str, account: LocalAccount) -> Path:
    """Write `folder/name` afresh (mode 0600, owned by `account`), never through a link."""
    fd_dir = _open_account_dir(folder, account)
    try:
        try:
            os.unlink(name, dir_fd=fd_dir)
        except FileNotFoundError:
            pass
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd_dir)
        try:
            os.fchown(fd, account.uid, account.gid)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    finally:
        os.close(fd_dir)
    return folder / name
