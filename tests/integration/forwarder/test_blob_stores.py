"""The blob store contract on both implementations: files in a folder, and an S3-compatible
server started by the test (moto's server mode, from PyPI: no real S3 server installs from the
package registries here, see docs/operator.md)."""

from __future__ import annotations

import os
import stat
import time
import uuid
from pathlib import Path

import pytest

from taskfabric.forwarder.blobs import (
    BlobIntegrityError,
    BlobMissing,
    BlobRef,
    BlobStore,
    FilesystemBlobStore,
    blob_name,
    open_blob_store,
    read_verified,
)


@pytest.fixture(params=["filesystem", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "filesystem":
        return open_blob_store(f"file://{tmp_path / 'blobs'}")
    s3: BlobStore = request.getfixturevalue("s3_blobs")
    return s3


def test_put_then_read_the_same_bytes_streamed_in_chunks(blobs: BlobStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    ref = blobs.put(blob_name(uuid.uuid4()), data)
    assert ref.size == len(data) and len(ref.sha256) == 64
    chunks = list(blobs.stream_verified(ref))
    assert len(chunks) > 1 and b"".join(chunks) == data
    assert read_verified(blobs, ref) == data
    assert blobs.usage_bytes() == len(data)


def test_a_changed_blob_fails_its_digest_check(blobs: BlobStore) -> None:
    task_id = uuid.uuid4()
    name = blob_name(task_id)
    ref = blobs.put(name, b"A" * 5000)
    blobs.put(name, b"B" * 5000)  # same name, same size, other bytes: as if tampered with
    with pytest.raises(BlobIntegrityError, match=name):
        read_verified(blobs, ref)
    longer = BlobRef(name=name, size=4000, sha256=ref.sha256)
    with pytest.raises(BlobIntegrityError):
        read_verified(blobs, longer)


def test_missing_blobs_deletion_and_sweep(blobs: BlobStore) -> None:
    with pytest.raises(BlobMissing):
        read_verified(blobs, BlobRef(name=blob_name(uuid.uuid4()), size=1, sha256="0" * 64))
    old = [blobs.put(blob_name(uuid.uuid4()), b"x" * 100) for _ in range(3)]
    blobs.delete([old[0].name, blob_name(uuid.uuid4())])  # a missing one is no error
    with pytest.raises(BlobMissing):
        read_verified(blobs, old[0])
    cut = time.time() + 1  # everything written so far is older
    assert blobs.sweep(cut - 3600) == 0
    assert blobs.sweep(cut) == 2
    assert blobs.usage_bytes() == 0


def test_files_are_private_and_names_cannot_leave_the_folder(tmp_path: Path) -> None:
    blobs = FilesystemBlobStore(tmp_path / "blobs")
    ref = blobs.put(blob_name(uuid.uuid4()), b"secret result")
    path = tmp_path / "blobs" / ref.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "blobs").stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    with pytest.raises(BlobMissing):  # a name the store would not make is never written
        blobs.put(f"{blob_name(uuid.uuid4())}\n", b"x")
    for hostile in ("../../etc/passwd", "ab/../../x", "/etc/passwd", "", f"{ref.name}\n"):
        with pytest.raises(BlobMissing):
            read_verified(blobs, BlobRef(name=hostile, size=1, sha256="0" * 64))
