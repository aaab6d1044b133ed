"""Blobs as files under one folder (the default store).

Layout: `<root>/<2 hex>/<task id>-<random>`; folders 0700, files 0600 (results are the users'
data). A write goes to a temporary file in the same folder, is flushed to disk (and its pages
dropped from the page cache), then renamed over its name, so a reader (or a crash) never sees half
a blob; leftover temporary files are swept.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from taskfabric.forwarder.blobs.base import CHUNK_BYTES, BlobError, BlobMissing, BlobStore, BlobWriter

__all__ = ["FilesystemBlobStore"]

log = logging.getLogger(__name__)

#: the names blobs get: a task's result (`blob_name`) or a user's upload by digest
#: (`data_refs.data_blob_name`); anything else is refused, so no name leaves the root
_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{32}-(?:[0-9a-f]{16}|[0-9a-f]{64})")
_TMP_SUFFIX = ".tmp"


class FilesystemBlobStore(BlobStore):
    """Blobs in `root` (created 0700 when missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)
        except OSError as exc:
            raise BlobError(f"cannot create the blob folder {root}: {exc}") from None

    def _path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):  # (`$` would let a trailing newline through)
            raise BlobMissing(f"not a blob name: {name!r}")
        return self.root / name

    def _write(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                _sync_and_drop(file.fileno())
            os.replace(tmp, path)
            _sync_folder(path.parent)  # the rename itself survives a crash
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BlobError(f"cannot write blob {name}: {exc}") from None

    def open_writer(self, name: str) -> BlobWriter:
        return _FileWriter(self, name, self._path(name))

    def open_chunks(self, name: str) -> Iterator[bytes]:
        path = self._path(name)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise BlobMissing(f"blob {name} is missing") from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {name}: {exc}") from None
        return _chunks(file, name)

    def delete(self, names: list[str]) -> None:
        for name in names:
            try:
                self._path(name).unlink(missing_ok=True)
            except BlobMissing:
                log.warning("not deleting %r: not a blob name", name)
            except OSError as exc:
                raise BlobError(f"cannot delete blob {name}: {exc}") from None

    def sweep(self, before: float) -> int:
        removed = 0
        for path in self._files():
            try:
                if path.stat().st_mtime < before:
                    path.unlink(missing_ok=True)
                    removed += 1
            except FileNotFoundError:
                continue  # deleted meanwhile (its task was deleted)
            except OSError as exc:
                raise BlobError(f"cannot sweep blob {path}: {exc}") from None
        return removed

    def usage_bytes(self) -> int:
        total = 0
        for path in self._files():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def _files(self) -> Iterator[Path]:
        for folder in self.root.iterdir():
            if folder.is_dir() and len(folder.name) == 2:
                yield from (path for path in folder.iterdir() if path.is_file())


class _FileWriter(BlobWriter):
    """Chunks straight to a temporary file beside the blob, renamed over it at commit: an upload
    never sits whole in the forwarder's memory."""

    def __init__(self, store: FilesystemBlobStore, name: str, path: Path) -> None:
        super().__init__(store, name)
        self._path = path
        self._tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise BlobError(f"cannot write blob {name}: {exc}") from None
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def _write(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as exc:
            self.abort()
            raise BlobError(f"cannot write blob {self.name}: {exc}") from None

    def _commit(self) -> None:
        try:
            self._file.flush()
            _sync_and_drop(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
            _sync_folder(self._path.parent)
        except OSError as exc:
            self.abort()
            raise BlobError(f"cannot write blob {self.name}: {exc}") from None

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _sync_and_drop(fd: int) -> None:
    """fsync, then drop the file's pages from the page cache: they are clean, and a blob is read
    rarely (most results reach their client from memory, `forwarder/fresh_uploads.py`). Freed at
    once, those pages serve the next blob's write; left cached, every write takes pages the system
    has not touched lately, which on a VM costs more than the copy into them (2 ms against 0.9 per
    MiB written here, fsync included)."""
    os.fsync(fd)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks(file: BinaryIO, name: str) -> Iterator[bytes]:
    try:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
    except OSError as exc:
        raise BlobError(f"cannot read blob {name}: {exc}") from None
    finally:
        file.close()
