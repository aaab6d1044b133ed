"""One large result (24 MB) through a whole fabric with the default filesystem blob store: kept
as a blob (not in the SQL store), the same bytes at the client (digest checked end to end), still
there after a forwarder restart, and a tampered blob is a typed `ResultIntegrityError`.

A 200 MB argument and a 200 MB result through the data path: the argument uploaded by reference,
the result uploaded by the worker (above the endpoint's max_result_bytes, so it cannot have ridden
the broker), the forwarder recording the blob, the client downloading it, digests checked; a
result upload grant opens only its own task, and only while it is valid.

Arguments by reference through the same fabric: a 64 MB argument uploaded once
(`Client.put_data`), used by two tasks, digest checked on the worker and at the client; another
user's reference does not open it; an expired reference and a tampered blob fail the task with
`DataUnavailable` and `DataIntegrityError`.

One fabric for the module (SQLite: the store is not the point here, the blob store is)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskfabric.client import (
    Client,
    DataIntegrityError,
    DataUnavailable,
    Executor,
    InvalidRequest,
    NotFoundError,
    ResultIntegrityError,
)
from taskfabric.client.serialization import serialize_data
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.data_refs import DataRefSigner
from taskfabric.forwarder.result_uploads import GrantClaims, ResultUploadSigner
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name

SIZE = 24 * 1024 * 1024
_MIB = 1024 * 1024

ENDPOINT_SETTINGS: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "max_result_bytes": 64 * _MIB,
    "scaling": {"workers_per_node": 1, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


def make_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclasses.dataclass
class BlobFabric:
    forwarder: ForwarderProcess
    database: Path
    blobs: Path
    token: str
    endpoint_id: str
    settings: ForwarderSettings

    def client(self) -> Client:
        return Client(url=self.forwarder.url, token=self.token)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def blob_fabric(broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobFabric]:
    assert broker.management_url, "end-to-end tests need the broker's management API"
    folder = tmp_path_factory.mktemp("fabric-blobs")
    values = {
        "port": _free_port(),  # a restarted forwarder keeps its URL
        "status_period_s": 0.5,
        "endpoint_offline_after_s": 3.0,
        "database_url": f"sqlite:///{folder / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("e2e-blobs"),
        # above the endpoint's own max_result_bytes (64 MiB): a larger result can only arrive
        # uploaded by the worker, never through the broker
        "quotas": {"max_result_bytes": 256 * _MIB},
    }
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    settings = ForwarderSettings.from_mapping(values)
    username, endpoint_name = unique_name("researcher"), unique_name("ep")
    forwarder = ForwarderProcess(folder / "forwarder", values).start()
    try:
        create_user(settings, username)
        token = create_token(settings, username)
        configure_endpoint(endpoint_name, settings=ENDPOINT_SETTINGS)
        with Client(url=forwarder.url, token=token) as client:
            endpoint_id = str(register_endpoint(endpoint_name, client).endpoint_id)
            start_endpoint(endpoint_name, detach=True)
        yield BlobFabric(forwarder, folder / "fw.db", folder / "blobs", token, endpoint_id, settings)
    finally:
        if LocalEndpoint(endpoint_name).pid() is not None:
            stop_endpoint(endpoint_name, timeout_s=30)
        forwarder.stop()
        patch.undo()


def _row(database: Path, task_id: str) -> tuple[Any, ...]:
    with sqlite3.connect(database) as connection:
        row = connection.execute(
            "SELECT result, result_blob, result_size, result_sha256 FROM tasks WHERE task_id = ?",
            (task_id.replace("-", ""),),
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_a_large_result_survives_a_restart_and_tampering_is_typed(blob_fabric: BlobFabric) -> None:
    expected = hashlib.sha256(make_bytes(7, SIZE)).hexdigest()
    with blob_fabric.client() as client, Executor(blob_fabric.endpoint_id, client=client) as executor:
        future = executor.submit(make_bytes, 7, SIZE)
        value = future.result(timeout=120)  # delivered by the results stream
        task_id = str(future.task_id)
    assert hashlib.sha256(value).hexdigest() == expected
    del value

    result, name, size, digest = _row(blob_fabric.database, task_id)
    blob = blob_fabric.blobs / name
    assert result is None and size > SIZE and blob.stat().st_size == size  # not in the SQL store
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest

    blob_fabric.forwarder.stop()
    blob_fabric.forwarder.start()
    with blob_fabric.client() as client:
        streamed = client.download_result(task_id)  # GET /v1/tasks/{id}/result: streamed from the blob
        assert hashlib.sha256(streamed).hexdigest() == expected
        del streamed
        value = client.get_result(task_id)  # GET /v1/tasks/{id}: the JSON route, as before
        assert hashlib.sha256(value).hexdigest() == expected
        del value

        tampered = bytearray(blob.read_bytes())
        tampered[SIZE // 2] ^= 0xFF
        blob.write_bytes(bytes(tampered))
        with pytest.raises(ResultIntegrityError, match=task_id):
            client.get_result(task_id)
        with pytest.raises(ResultIntegrityError, match=task_id):
            client.download_result(task_id)
    # the dashboard's task page shows the size from the row: it neither reads nor checks the blob
    assert f"Result: {size} bytes" in _dashboard_task_page(blob_fabric, task_id)

    other = unique_name("other")
    create_user(blob_fabric.settings, other)
    with Client(url=blob_fabric.forwarder.url, token=create_token(blob_fabric.settings, other)) as stranger:
        with pytest.raises(NotFoundError):
            stranger.download_result(task_id)  # another user's result does not exist for them
        with pytest.raises(InvalidRequest):
            stranger.download_result("not-a-task-id")


def _dashboard_task_page(fabric: BlobFabric, task_id: str) -> str:
    with httpx.Client(base_url=fabric.forwarder.url) as browser:
        form = browser.get("/ui/signin").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert csrf is not None
        signed_in = browser.post("/ui/signin", data={"token": fabric.token, "csrf_token": csrf.group(1), "next": ""})
        assert signed_in.status_code == 303
        page = browser.get(f"/ui/tasks/{task_id}")
        assert page.status_code == 200
        return page.text


# --- arguments by reference (PUT/GET /v1/data/{sha256}) ------------------------------------

ARGUMENT_SIZE = 64 * _MIB


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_large_argument_by_reference_is_uploaded_once_and_bound_to_its_user(blob_fabric: BlobFabric) -> None:
    big = make_bytes(11, ARGUMENT_SIZE)
    expected = sha256_of(big)
    with blob_fabric.client() as client, Executor(blob_fabric.endpoint_id, client=client) as executor:
        ref = client.put_data(big)
        assert client.put_data(big) is ref  # the same object again: not uploaded twice
        assert ref.size > ARGUMENT_SIZE  # random bytes: pickled, not compressed
        futures = [executor.submit(sha256_of, ref) for _ in range(2)]
        assert [future.result(timeout=120) for future in futures] == [expected, expected]
    del big
    stored = list((blob_fabric.blobs / ref.sha256[:2]).glob(f"*-{ref.sha256}"))
    assert len(stored) == 1 and stored[0].stat().st_size == ref.size

    # Executor(by_reference_bytes=...): large top-level arguments go by reference on their own
    medium = make_bytes(13, 4 * _MIB)
    with (
        blob_fabric.client() as client,
        Executor(blob_fabric.endpoint_id, client=client, by_reference_bytes=_MIB) as executor,
    ):
        assert executor.submit(sha256_of, medium).result(timeout=60) == sha256_of(medium)
    uploaded = sha256_of(serialize_data(medium))
    assert list((blob_fabric.blobs / uploaded[:2]).glob(f"*-{uploaded}"))

    other = unique_name("other")
    create_user(blob_fabric.settings, other)
    with httpx.Client(base_url=blob_fabric.forwarder.url) as raw:
        assert raw.get(f"/v1/data/{ref.sha256}", headers={"X-Taskfabric-Data-Ref": ref.token}).status_code == 200
        with Client(url=blob_fabric.forwarder.url, token=create_token(blob_fabric.settings, other)) as stranger:
            own = stranger.put_data(b"the stranger's own bytes")
            # the stranger's valid reference does not open the first user's blob
            refused = raw.get(f"/v1/data/{ref.sha256}", headers={"X-Taskfabric-Data-Ref": own.token})
            assert (refused.status_code, refused.json()["error"]["code"]) == (403, "DATA_REF_INVALID")
            assert raw.get(f"/v1/data/{ref.sha256}").status_code == 400  # no reference at all
            mismatch = httpx.put(
                f"{blob_fabric.forwarder.url}/v1/data/{'0' * 64}",
                content=b"not those bytes",
                headers={"Authorization": f"Bearer {create_token(blob_fabric.settings, other)}"},
            )
            assert (mismatch.status_code, mismatch.json()["error"]["code"]) == (400, "DATA_DIGEST_MISMATCH")
            anonymous = httpx.put(f"{blob_fabric.forwarder.url}/v1/data/{ref.sha256}", content=b"x")
            assert anonymous.status_code == 401


def test_an_expired_or_tampered_reference_fails_the_task_with_a_typed_error(blob_fabric: BlobFabric) -> None:
    small = make_bytes(12, 2 * _MIB)
    with blob_fabric.client() as client, Executor(blob_fabric.endpoint_id, client=client) as executor:
        ref = client.put_data(small)
        key = (blob_fabric.database.parent / "data-ref.key").read_bytes()
        claims = DataRefSigner(key).verify(ref.token, sha256=ref.sha256, now=time.time())
        expired_token = DataRefSigner(key).sign(dataclasses.replace(claims, expires_at=time.time() - 1))
        expired = dataclasses.replace(ref, token=expired_token, expires_at=time.time() - 1)
        with pytest.raises(DataUnavailable, match="DATA_REF_EXPIRED"):
            executor.submit(sha256_of, expired).result(timeout=60)

        (blob,) = (blob_fabric.blobs / ref.sha256[:2]).glob(f"*-{ref.sha256}")
        tampered = bytearray(blob.read_bytes())
        tampered[len(tampered) // 2] ^= 0xFF
        blob.write_bytes(bytes(tampered))
        with pytest.raises(DataIntegrityError, match=ref.sha256):
            executor.submit(sha256_of, ref).result(timeout=60)


# --- the 200 MB data path: argument by reference, result uploaded by the worker -----------

HUGE = 200 * 1000 * 1000


def echo(data: bytes) -> bytes:
    return data


def test_a_200_mb_argument_and_result_travel_the_data_path(blob_fabric: BlobFabric) -> None:
    huge = random.Random(21).randbytes(HUGE)
    expected = sha256_of(huge)
    with blob_fabric.client() as client, Executor(blob_fabric.endpoint_id, client=client) as executor:
        ref = client.put_data(huge)
        del huge
        future = executor.submit(echo, ref)
        value = future.result(timeout=180)
        task_id = str(future.task_id)
    assert len(value) == HUGE and sha256_of(value) == expected
    del value

    result, name, size, digest = _row(blob_fabric.database, task_id)
    assert result is None and size > HUGE  # the row names the blob the worker uploaded
    blob = blob_fabric.blobs / name
    assert blob.stat().st_size == size and blob.stat().st_mode & 0o777 == 0o600
    hasher = hashlib.sha256()
    with blob.open("rb") as file:
        while chunk := file.read(8 * _MIB):
            hasher.update(chunk)
    assert hasher.hexdigest() == digest


def test_a_result_upload_grant_opens_only_its_own_task_while_valid(blob_fabric: BlobFabric) -> None:
    signer = ResultUploadSigner((blob_fabric.database.parent / "data-ref.key").read_bytes())
    mine, other = uuid.uuid4(), uuid.uuid4()
    grant = signer.grant(GrantClaims(task_id=mine, max_bytes=1024, expires_at=time.time() + 60))
    expired = signer.grant(GrantClaims(task_id=mine, max_bytes=1024, expires_at=time.time() - 1))
    with httpx.Client(base_url=blob_fabric.forwarder.url) as raw:

        def put(task_id: uuid.UUID, body: bytes, token: str | None) -> httpx.Response:
            headers = {"X-Taskfabric-Result-Grant": token} if token is not None else {}
            return raw.put(f"/v1/tasks/{task_id}/result-blob", content=body, headers=headers)

        for task_id, token in ((mine, None), (other, grant), (mine, expired), (mine, grant[:-2] + "xx")):
            refused = put(task_id, b"bytes", token)
            assert (refused.status_code, refused.json()["error"]["code"]) == (403, "RESULT_GRANT_INVALID")
        assert put(mine, b"x" * 2048, grant).status_code == 413  # more than the grant allows
        stored = put(mine, b"a result", grant)
        assert stored.status_code == 200
        answer = stored.json()
        assert answer["size"] == 8 and answer["sha256"] == sha256_of(b"a result")
        assert (blob_fabric.blobs / answer["name"]).read_bytes() == b"a result"


def _requests(fabric: BlobFabric, method: str, route: str) -> float:
    """How many requests to this route the forwarder answered with 200 (its /metrics)."""
    text = httpx.get(f"{fabric.forwarder.url}/metrics", timeout=10).text
    labels = f'method="{method}",route="{route}",status="200"'
    found = re.search(rf"^taskfabric_http_requests_total\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _result_downloads(fabric: BlobFabric) -> float:
    return _requests(fabric, "GET", "/v1/tasks/{task_id}/result")


def test_megabyte_echoes_take_the_data_path_by_default(blob_fabric: BlobFabric) -> None:
    """The default Executor: a 2 MiB argument sent in five tasks is uploaded once and passed by
    reference; each 2 MiB result is uploaded by its worker and pushed to the client on the results
    stream from the forwarder's memory (no download request); a 24 MB result, above
    `upload_push_bytes`, is still downloaded."""
    payload = make_bytes(31, 2 * _MIB)
    uploaded = sha256_of(serialize_data(payload))
    downloads = _result_downloads(blob_fabric)
    uploads = _requests(blob_fabric, "PUT", "/v1/tasks/{task_id}/result-blob")
    with blob_fabric.client() as client, Executor(blob_fabric.endpoint_id, client=client) as executor:
        futures = [executor.submit(echo, payload) for _ in range(5)]
        assert all(future.result(timeout=120) == payload for future in futures)
        # uploaded by the workers (answered before the router, counted under the route's template)
        assert _requests(blob_fabric, "PUT", "/v1/tasks/{task_id}/result-blob") == uploads + 5
        assert list(client._data_refs) == [uploaded]  # by reference, uploaded once
        assert client._data_refs[uploaded].url == blob_fabric.forwarder.url  # the forwarder's own URL for endpoints
        assert _result_downloads(blob_fabric) == downloads  # every result came whole on the stream
        rows = [_row(blob_fabric.database, str(future.task_id)) for future in futures]
        assert all(result is None and blob for result, blob, _size, _digest in rows)  # still kept as blobs
        assert executor.submit(make_bytes, 7, SIZE).result(timeout=120) == make_bytes(7, SIZE)
        assert _result_downloads(blob_fabric) == downloads + 1
    assert len(list((blob_fabric.blobs / uploaded[:2]).glob(f"*-{uploaded}"))) == 1

    with (
        blob_fabric.client() as client,
        Executor(blob_fabric.endpoint_id, client=client, by_reference_bytes=None) as executor,
    ):
        assert executor.submit(echo, payload[:_MIB]).result(timeout=60) == payload[:_MIB]
        assert client._data_refs == {}  # by_reference_bytes=None: inside the task
