"""Result uploads by workers (issue 15): grants open one task until they expire, receipts bind a
blob to its task, and the ingest screen turns a result naming a blob without a valid receipt into a
typed failure."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import pytest

from taskfabric.errors import ErrorCode, PayloadTooLarge, PermissionDenied
from taskfabric.forwarder.blobs import BlobRef, MemoryBlobStore, read_verified
from taskfabric.forwarder.fresh_uploads import FreshUploads
from taskfabric.forwarder.records import TaskRecord
from taskfabric.forwarder.result_limits import ResultLimits
from taskfabric.forwarder.result_uploads import GrantClaims, ResultUploads, ResultUploadSigner
from taskfabric.forwarder.views import task_result_frame
from taskfabric.manager.result_uploads import ResultUploader, _proxied, should_upload
from taskfabric.protocol import Result, ResultBlob, Task, TaskStatus
from taskfabric.protocol.result_uploads import RESULT_GRANT_HEADER

KEY = b"k" * 32


def _grant(signer: ResultUploadSigner, task_id: uuid.UUID, *, max_bytes: int = 100, ttl_s: float = 60) -> str:
    return signer.grant(GrantClaims(task_id=task_id, max_bytes=max_bytes, expires_at=time.time() + ttl_s))


def test_a_grant_opens_its_own_task_only_until_it_expires() -> None:
    signer, task_id = ResultUploadSigner(KEY), uuid.uuid4()
    grant = _grant(signer, task_id)
    assert signer.verify_grant(grant, task_id=task_id, now=time.time()).max_bytes == 100
    refused = [
        (None, task_id),
        (grant, uuid.uuid4()),  # another task
        (_grant(signer, task_id, ttl_s=-1), task_id),  # expired
        (_grant(ResultUploadSigner(b"x" * 32), task_id), task_id),  # another forwarder's key
        (grant.replace(".", ".A"), task_id),
        ("not-a-grant", task_id),
    ]
    for token, target in refused:
        with pytest.raises(PermissionDenied) as caught:
            signer.verify_grant(token, task_id=target, now=time.time())
        assert caught.value.code == "RESULT_GRANT_INVALID"


def test_a_receipt_binds_name_size_and_digest_to_the_task() -> None:
    signer, task_id = ResultUploadSigner(KEY), uuid.uuid4()
    ref = BlobRef(name="ab/" + "0" * 32 + "-" + "1" * 16, size=10, sha256="2" * 64)
    blob = ResultBlob(name=ref.name, size=ref.size, sha256=ref.sha256, receipt=signer.receipt(task_id, ref))
    assert signer.check_receipt(task_id, blob)
    assert not signer.check_receipt(uuid.uuid4(), blob)
    for changed in (
        dataclasses.replace(blob, size=11),
        dataclasses.replace(blob, sha256="3" * 64),
        dataclasses.replace(blob, name=ref.name[:-1] + "2"),
    ):
        assert not signer.check_receipt(task_id, changed)


def test_the_ingest_keeps_only_uploads_with_a_valid_receipt() -> None:
    signer, task_id = ResultUploadSigner(KEY), uuid.uuid4()
    ref = BlobRef(name="n", size=5, sha256="s")
    good = ResultBlob(name="n", size=5, sha256="s", receipt=signer.receipt(task_id, ref))
    forged = ResultBlob(name="other", size=5, sha256="s", receipt=good.receipt)
    limits = ResultLimits(max_result_bytes=10, max_results_per_message=10, receipts=signer)
    results = [
        Result(task_id=task_id, ok=True, value_blob=good),
        Result(task_id=task_id, ok=True, value_blob=forged, started_at=1.0),
    ]
    kept, dropped = limits.screen(results)
    assert kept is results[0]
    assert dropped.error is not None and dropped.error.code == ErrorCode.RESULT_INTEGRITY and dropped.started_at == 1.0
    no_signer = ResultLimits(max_result_bytes=10, max_results_per_message=10)
    assert not no_signer.screen(results[:1])[0].ok


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_an_upload_is_stored_under_the_task_and_bounded_by_the_grant() -> None:
    signer, blobs, task_id = ResultUploadSigner(KEY), MemoryBlobStore(), uuid.uuid4()
    uploads = ResultUploads(blobs, signer)
    blob = asyncio.run(uploads.put(task_id, _grant(signer, task_id), _body(b"abc", b"def"), now=time.time()))
    assert blob.size == 6 and blob.name.startswith(f"{task_id.hex[:2]}/{task_id.hex}-")
    assert signer.check_receipt(task_id, blob) and blobs.blobs[blob.name][0] == b"abcdef"
    with pytest.raises(PayloadTooLarge):
        asyncio.run(uploads.put(task_id, _grant(signer, task_id, max_bytes=4), _body(b"abc", b"def"), now=time.time()))
    assert len(blobs.blobs) == 1  # the refused upload left nothing


def test_a_worker_uploads_only_with_a_grant_and_above_the_threshold() -> None:
    task = Task(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"")
    granted = Task(
        task_id=task.task_id,
        function_id=task.function_id,
        payload=b"",
        result_upload_url="http://127.0.0.1:1",
        result_upload_grant="g",
        result_upload_min_bytes=1000,
    )
    assert not should_upload(task, 10**9)
    assert should_upload(granted, 1000) and not should_upload(granted, 999)


# --- uploads kept in memory for the results stream (forwarder/fresh_uploads.py) -------------


def _record(task_id: uuid.UUID, blob: ResultBlob | None) -> TaskRecord:
    now = time.time()
    record = TaskRecord(
        task_id=task_id,
        owner_id=uuid.uuid4(),
        endpoint_id=uuid.uuid4(),
        function_id=uuid.uuid4(),
        status=TaskStatus.SUCCESS,
        created_at=now,
    )
    if blob is not None:  # as the store returns a result the worker uploaded
        record.result_size, record.result_sha256, record.result_blob = blob.size, blob.sha256, blob.name
    return record


def test_an_upload_small_enough_is_kept_until_its_result_is_stored() -> None:
    signer, blobs = ResultUploadSigner(KEY), MemoryBlobStore()
    fresh = FreshUploads(max_bytes=10, max_item_bytes=6)
    uploads = ResultUploads(blobs, signer, fresh)
    kept, streamed, undeclared = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    small = asyncio.run(uploads.put(kept, _grant(signer, kept), _body(b"abc", b"def"), now=time.time(), size=6))
    large = asyncio.run(
        uploads.put(streamed, _grant(signer, streamed), _body(b"abcd", b"efg"), now=time.time(), size=7)
    )
    blind = asyncio.run(uploads.put(undeclared, _grant(signer, undeclared), _body(b"ab"), now=time.time()))
    assert fresh.held_bytes == 6  # only the declared upload that fits; every one is in the blob store
    assert [read_verified(blobs, BlobRef(b.name, b.size, b.sha256)) for b in (small, large, blind)] == [
        b"abcdef",
        b"abcdefg",
        b"ab",
    ]

    records = [_record(kept, small), _record(streamed, large), _record(undeclared, blind), _record(uuid.uuid4(), None)]
    assert fresh.attach(records) == 1
    assert records[0].result == b"abcdef" and fresh.held_bytes == 0  # handed on once, then forgotten
    assert [record.result for record in records[1:]] == [None, None, None]  # these are downloaded
    frame = task_result_frame(records[0])
    assert frame["value"] == b"abcdef" and frame["value_sha256"] is None  # pushed whole, not by reference
    assert task_result_frame(records[1])["value_sha256"] == large.sha256


def test_uploads_kept_in_memory_stay_within_their_budget() -> None:
    fresh = FreshUploads(max_bytes=10, max_item_bytes=4)
    for index in range(5):
        fresh.remember(f"blob-{index}", bytes([index]) * 4)
    fresh.remember("too-large", b"x" * 5)
    assert fresh.held_bytes == 8  # the two newest: the oldest went first
    assert fresh.take("blob-2") is None and fresh.take("too-large") is None
    assert fresh.take("blob-4") == b"\x04" * 4 and fresh.held_bytes == 4
    mismatched = _record(uuid.uuid4(), ResultBlob(name="blob-3", size=5, sha256="0" * 64, receipt=""))
    assert fresh.attach([mismatched]) == 0 and mismatched.result is None  # not the recorded size: not used


# --- the worker's uploader (manager/result_uploads.py) -----------------------------------------


class _OneRequestPerConnection(http.server.BaseHTTPRequestHandler):
    """Answers a result upload as the forwarder does, then drops the connection without saying
    so (as a forwarder whose keep-alive ran out does between two of a worker's tasks)."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, int, str]] = []

    def do_PUT(self) -> None:
        size = int(self.headers["Content-Length"])
        body = self.rfile.read(size)
        self.seen.append((self.path, len(body), self.headers.get(RESULT_GRANT_HEADER, "")))
        answer = json.dumps({"name": "ab/blob", "size": len(body), "sha256": "0" * 64, "receipt": "r"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_worker_uploads_over_a_kept_connection_and_reconnects_once_it_was_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneRequestPerConnection)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    uploader = ResultUploader(timeout_s=10)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/prefix/"
        tasks = [
            Task(
                task_id=uuid.uuid4(),
                function_id=uuid.uuid4(),
                payload=b"",
                result_upload_url=url,
                result_upload_grant=f"grant-{index}",
                result_upload_min_bytes=1,
            )
            for index in range(3)
        ]
        blobs = [uploader.upload(task, b"x" * (1000 + index)) for index, task in enumerate(tasks)]
    finally:
        uploader.close()
        server.shutdown()
        server.server_close()
    assert [blob.size for blob in blobs] == [1000, 1001, 1002]
    assert _OneRequestPerConnection.seen == [
        (f"/prefix/v1/tasks/{task.task_id}/result-blob", 1000 + index, f"grant-{index}")
        for index, task in enumerate(tasks)
    ]
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert _proxied(urllib.parse.urlsplit("http://forwarder.example:8470"))  # through httpx, which honours it
    assert not _proxied(urllib.parse.urlsplit("http://localhost:8470"))
