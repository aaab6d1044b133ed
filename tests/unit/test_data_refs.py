"""Signed data references (forwarder/data_refs.py) and the worker's handling of a reference it
cannot use (manager/execution.py + manager/data_refs.py), without a network."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import cloudpickle
import numpy
import pytest

from taskfabric.client.serialization import buffer_bytes
from taskfabric.errors import ConfigError, ErrorCode, InvalidRequest, NotFoundError, PayloadTooLarge, PermissionDenied
from taskfabric.forwarder.blobs import MemoryBlobStore
from taskfabric.forwarder.data_refs import (
    DataClaims,
    DataRefSigner,
    check_sha256,
    data_blob_name,
    load_or_create_key,
)
from taskfabric.forwarder.data_uploads import DataUploads
from taskfabric.forwarder.records import Identity
from taskfabric.manager.data_refs import DataFetcher, DataFetchError
from taskfabric.manager.execution import TaskRunner
from taskfabric.protocol import FunctionBody, Task
from taskfabric.protocol.data_refs import DataRef

DIGEST = hashlib.sha256(b"payload").hexdigest()
USER = uuid.uuid4()
NOW = 1_000_000.0


def signer(key: bytes = b"k" * 32) -> DataRefSigner:
    return DataRefSigner(key)


def token(expires_at: float = NOW + 60, digest: str = DIGEST) -> str:
    return signer().sign(DataClaims(user_id=USER, sha256=digest, size=7, expires_at=expires_at))


def test_a_valid_token_gives_back_its_claims() -> None:
    claims = signer().verify(token(), sha256=DIGEST, now=NOW)
    assert claims == DataClaims(user_id=USER, sha256=DIGEST, size=7, expires_at=NOW + 60)


def test_an_expired_token_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="expired") as caught:
        signer().verify(token(expires_at=NOW), sha256=DIGEST, now=NOW)
    assert caught.value.code == "DATA_REF_EXPIRED"


def test_a_token_for_another_digest_is_refused() -> None:
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(PermissionDenied, match="another digest"):
        signer().verify(token(), sha256=other, now=NOW)


def test_a_token_signed_with_another_key_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="signature"):
        DataRefSigner(b"x" * 32).verify(token(), sha256=DIGEST, now=NOW)


def test_altered_claims_break_the_signature() -> None:
    mac = token().split(".")[1]
    forged = signer(b"attacker" * 4).sign(DataClaims(user_id=uuid.uuid4(), sha256=DIGEST, size=7, expires_at=NOW + 60))
    with pytest.raises(PermissionDenied, match="signature"):
        signer().verify(f"{forged.split('.')[0]}.{mac}", sha256=DIGEST, now=NOW)


@pytest.mark.parametrize("bad", ["", "no-dot", ".", "abc.", ".abc", "a.b!", "x" * 2000])
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(PermissionDenied) as caught:
        signer().verify(bad, sha256=DIGEST, now=NOW)
    assert caught.value.code == "DATA_REF_INVALID"


def test_blob_names_are_per_user_and_digest() -> None:
    assert check_sha256(DIGEST) and not check_sha256(DIGEST.upper()) and not check_sha256("../" + DIGEST[3:])
    assert not check_sha256(DIGEST + "\n")
    assert data_blob_name(USER, DIGEST) == f"{DIGEST[:2]}/{USER.hex}-{DIGEST}"
    assert data_blob_name(uuid.uuid4(), DIGEST) != data_blob_name(USER, DIGEST)


def test_the_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data-ref.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="data_ref_key_file"):
        load_or_create_key(path)


def test_a_reference_the_worker_cannot_fetch_fails_the_task_as_data_unavailable() -> None:
    runner = TaskRunner(max_result_bytes=1 << 20)
    function_id = uuid.uuid4()
    runner.add_functions([FunctionBody(function_id=function_id, body=cloudpickle.dumps(len), python_version="")])
    # a closed local port: the download fails before any byte arrives
    ref = DataRef(url="http://127.0.0.1:9", sha256=DIGEST, size=7, token=token(), expires_at=NOW)
    task = Task(task_id=uuid.uuid4(), function_id=function_id, payload=cloudpickle.dumps(((ref,), {})))
    result = runner.run(task)
    assert not result.ok and result.error is not None
    assert result.error.code == ErrorCode.DATA_UNAVAILABLE
    assert DIGEST in result.error.message


def test_keys_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        DataRefSigner(os.urandom(8))


# --- the upload and read logic of the routes (forwarder/data_uploads.py), on the memory store --


def _uploads(max_bytes: int = 1 << 20) -> tuple[DataUploads, MemoryBlobStore]:
    blobs = MemoryBlobStore()
    return DataUploads(blobs, signer(), max_bytes=max_bytes, ttl_s=60), blobs


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_an_upload_is_stored_per_user_and_read_back_with_its_token() -> None:
    uploads, blobs = _uploads()
    alice = Identity(user_id=USER, username="alice", auth="local")
    answer = asyncio.run(uploads.put(alice, DIGEST, _body(b"pay", b"load")))
    assert answer["size"] == 7 and set(blobs.blobs) == {data_blob_name(USER, DIGEST)}
    read = uploads.open(DIGEST, str(answer["token"]))
    assert b"".join(read.chunks) == b"payload"
    bob = Identity(user_id=uuid.uuid4(), username="bob", auth="local")
    bobs = asyncio.run(uploads.put(bob, DIGEST, _body(b"payload")))
    assert len(blobs.blobs) == 2  # the same bytes from another user: a blob of their own
    blobs.delete([data_blob_name(USER, DIGEST)])
    with pytest.raises(NotFoundError, match="no longer stored"):
        uploads.open(DIGEST, str(answer["token"]))
    assert b"".join(uploads.open(DIGEST, str(bobs["token"])).chunks) == b"payload"


@pytest.mark.parametrize(
    ("digest", "chunks", "error", "match"),
    [
        (DIGEST, [b"other bytes"], InvalidRequest, "not the"),
        (DIGEST, [b"x" * 600, b"x" * 600], PayloadTooLarge, "max_data_bytes"),
        (DIGEST, [], InvalidRequest, "empty"),
        ("../etc/passwd", [b"payload"], InvalidRequest, "sha256"),
    ],
)
def test_bad_uploads_are_typed_4xx(digest: str, chunks: list[bytes], error: type[Exception], match: str) -> None:
    uploads, blobs = _uploads(max_bytes=1000)
    identity = Identity(user_id=USER, username="alice", auth="local")
    with pytest.raises(error, match=match):
        asyncio.run(uploads.put(identity, digest, _body(*chunks)))
    assert not blobs.blobs


def test_a_read_without_a_token_is_refused() -> None:
    uploads, _ = _uploads()
    with pytest.raises(InvalidRequest, match="X-Taskfabric-Data-Ref"):
        uploads.open(DIGEST, None)


def test_buffer_sizes_are_read_without_pickling_or_resolving_proxies() -> None:
    class Lazy:  # a proxy that would resolve on any attribute lookup
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"resolved by asking for {name}")

    assert buffer_bytes(b"abc") == 3 and buffer_bytes(bytearray(5)) == 5
    assert buffer_bytes(memoryview(bytes(8)).cast("d")) == 8
    assert buffer_bytes(numpy.zeros(4, dtype=numpy.float64)) == 32
    assert buffer_bytes(Lazy()) == 0 and buffer_bytes([b"x" * 100]) == 0


def test_a_worker_reuses_a_download_only_for_the_same_reference() -> None:
    fetcher = DataFetcher(timeout_s=5)
    fetcher._last = (token(), b"payload")  # what a download of this reference left behind
    same = DataRef(url="http://127.0.0.1:9", sha256=DIGEST, size=7, token=token(), expires_at=NOW)
    assert fetcher.fetch(same) == b"payload"
    # the same digest under another user's (or a forged) token is fetched, and refused, anew
    other = DataRef(url="http://127.0.0.1:9", sha256=DIGEST, size=7, token="forged.token", expires_at=NOW)
    with pytest.raises(DataFetchError) as caught:
        fetcher.fetch(other)
    assert caught.value.code == ErrorCode.DATA_UNAVAILABLE
