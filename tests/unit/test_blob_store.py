"""The blob store's domain rules on the in-memory store: names, verified reads, sweep, URLs,
and the forwarder settings that choose a store."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import pytest

from taskfabric.errors import ConfigError, ErrorCode, ResultIntegrityError, TaskFailed
from taskfabric.forwarder import ForwarderSettings
from taskfabric.forwarder.blobs import (
    BlobError,
    BlobIntegrityError,
    BlobMissing,
    BlobRef,
    MemoryBlobStore,
    blob_name,
    open_blob_store,
    read_verified,
)
from taskfabric.forwarder.blobs.base import CHUNK_BYTES


def test_names_are_per_task_and_never_repeat() -> None:
    task_id = uuid.uuid4()
    first, second = blob_name(task_id), blob_name(task_id)
    assert first != second and first.startswith(f"{task_id.hex[:2]}/{task_id.hex}-")
    assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{32}-[0-9a-f]{16}", first)


def test_a_verified_read_checks_size_and_digest() -> None:
    blobs = MemoryBlobStore()
    data = b"x" * (2 * CHUNK_BYTES + 3)
    ref = blobs.put(blob_name(uuid.uuid4()), data)
    assert ref == BlobRef(ref.name, len(data), hashlib.sha256(data).hexdigest())
    assert read_verified(blobs, ref) == data
    for wrong in (BlobRef(ref.name, len(data) - 1, ref.sha256), BlobRef(ref.name, len(data), "0" * 64)):
        with pytest.raises(BlobIntegrityError, match=ref.name):
            read_verified(blobs, wrong)
    shorter = BlobRef(ref.name, len(data) + 1, ref.sha256)
    with pytest.raises(BlobIntegrityError):
        read_verified(blobs, shorter)
    blobs.delete([ref.name])
    with pytest.raises(BlobMissing):
        read_verified(blobs, ref)


def test_sweep_deletes_only_older_blobs() -> None:
    blobs = MemoryBlobStore()
    ref = blobs.put(blob_name(uuid.uuid4()), b"old")
    blobs.blobs[ref.name] = (b"old", 100.0)
    kept = blobs.put(blob_name(uuid.uuid4()), b"new")
    assert blobs.sweep(200.0) == 1
    assert list(blobs.blobs) == [kept.name] and blobs.usage_bytes() == 3


def test_blob_store_urls(tmp_path: Path) -> None:
    assert open_blob_store(f"file://{tmp_path / 'b'}").usage_bytes() == 0
    for bad in ("file://relative/path", "s3://", "ftp://x/y", "/no/scheme"):
        with pytest.raises(BlobError):
            open_blob_store(bad)


def test_settings_choose_the_blob_store(tmp_path: Path) -> None:
    settings = ForwarderSettings(database_url=f"sqlite:///{tmp_path / 'fw.db'}")
    assert settings.blob_store_url == f"file://{tmp_path / 'blobs'}"
    assert settings.blob_threshold_bytes == 64 * 1024
    with pytest.raises(ConfigError, match="blob_store_url"):
        ForwarderSettings.from_mapping({"blob_store_url": "ftp://host/x"})
    with pytest.raises(ConfigError, match="blob_s3_endpoint_url"):
        ForwarderSettings.from_mapping({"blob_store_url": "s3://bucket", "blob_s3_endpoint_url": "tcp://x"})
    with pytest.raises(ConfigError, match="blob_threshold_bytes"):
        ForwarderSettings.from_mapping({"blob_threshold_bytes": -1})


def test_the_integrity_code_maps_to_its_error_class() -> None:
    assert TaskFailed.for_code(ErrorCode.RESULT_INTEGRITY) is ResultIntegrityError
