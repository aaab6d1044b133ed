"""Nothing unauthenticated costs much (issue 12): a real forwarder process, hostile raw sockets.

The forwarder here is private (short timeouts, a small connection limit, small body limits), so
that slow clients and the connection limit do not disturb the other tests' forwarders.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskfabric.client import Client, Executor
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.forwarder.testing.abuse import (
    connect,
    count_pongs,
    ping_frames,
    read_response,
    request_head,
    send_slowly,
    upload,
    websocket_connect,
)
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

_MIB = 1024 * 1024
LIMITS: dict[str, Any] = {
    "unauthenticated_body_bytes": 4096,
    "function_body_bytes": 512 * 1024,
    "submit_body_bytes": 2 * _MIB,
    "lookup_body_bytes": 64 * 1024,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "idle_timeout_s": 1.0,
    "max_connections": 12,
}


class Limited:
    """The private forwarder and one user's token."""

    def __init__(self, process: ForwarderProcess, settings: ForwarderSettings, token: str) -> None:
        self.process = process
        self.settings = settings
        self.url = process.url
        self.token = token

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30.0)


@pytest.fixture(scope="module")
def limited(broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    folder: Path = tmp_path_factory.mktemp("limited-forwarder")
    assert broker.management_url
    values = {
        "database_url": f"sqlite:///{folder / 'forwarder.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("fw-limits"),
        "max_payload_bytes": 256 * 1024,
        "max_function_bytes": 256 * 1024,
        "max_request_bytes": 2 * _MIB,
        "limits": LIMITS,
    }
    settings = ForwarderSettings.from_mapping(values)
    with ForwarderProcess(folder, values) as process:
        name = unique_name("limits")
        create_user(settings, name)
        yield Limited(process, settings, create_token(settings, name))


def _error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    return error


@pytest.mark.parametrize(
    ("path", "size"), [("/v1/functions", 400 * 1024), (f"/v1/endpoints/{uuid.uuid4()}/tasks", _MIB)]
)
def test_an_unauthenticated_upload_is_refused_before_its_body_is_sent(limited: Limited, path: str, size: int) -> None:
    """The 401 comes on the headers alone: the client has sent none of a body that is within the
    route's size limit (before the fix, FastAPI read and parsed a function's body before the token
    check, and the connection stayed open with the body unread)."""
    with connect(limited.url, timeout_s=10.0) as sock:
        sock.sendall(request_head("POST", path, content_length=size))
        response = read_response(sock)  # nothing of the body sent
    assert response.status == 401
    assert _error(response.body)["code"] == "AUTHENTICATION_REQUIRED"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["connection"] == "close" and response.closed


def test_an_unauthenticated_50_mb_upload_is_answered_after_a_fraction_of_it(limited: Limited) -> None:
    for path, token in [("/v1/functions", None), (f"/v1/endpoints/{uuid.uuid4()}/tasks", "tf_not-a-real-token")]:
        outcome = upload(limited.url, path, body_bytes=50 * _MIB, token=token)
        assert outcome.response is not None
        assert outcome.response.status == 401, outcome.response.body
        assert outcome.response.closed
        assert outcome.sent_bytes < 10 * _MIB  # at most what the sockets' buffers took


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("POST", "/v1/functions", "function_body_bytes"),
        ("POST", "/v1/endpoints/{id}/tasks", "submit_body_bytes"),
        ("POST", "/v1/tasks/batch", "lookup_body_bytes"),
        ("POST", "/v1/tasks/cancel", "max_request_bytes"),
        ("GET", "/v1/version", "unauthenticated_body_bytes"),
        ("POST", "/no/such/route", "unauthenticated_body_bytes"),
    ],
)
def test_each_route_has_its_own_body_limit_checked_on_content_length(
    limited: Limited, method: str, path: str, key: str
) -> None:
    limit = LIMITS.get(key, limited.settings.max_request_bytes)
    setting = f"limits.{key}" if key in LIMITS else key
    with connect(limited.url, timeout_s=10.0) as sock:
        sock.sendall(request_head(method, path.format(id=uuid.uuid4()), token=limited.token, content_length=limit + 1))
        response = read_response(sock)  # answered with no body byte sent
    assert response.status == 413
    error = _error(response.body)
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    assert f"above the limit of {limit} bytes" in error["message"] and setting in error["message"]
    assert response.closed


def test_a_body_at_the_limit_reaches_the_route(limited: Limited) -> None:
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    body = json.dumps({"task_ids": ids}).encode()
    body += b" " * (LIMITS["lookup_body_bytes"] - len(body))
    with limited.http() as http:
        response = http.post("/v1/tasks/batch", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert sorted(response.json()["unknown"]) == sorted(ids)


def test_a_chunked_body_is_cut_off_at_the_running_count(limited: Limited) -> None:
    outcome = upload(limited.url, "/v1/tasks/batch", body_bytes=20 * _MIB, token=limited.token, chunked=True)
    assert outcome.response is not None
    assert outcome.response.status == 413
    assert "limits.lookup_body_bytes" in _error(outcome.response.body)["message"]
    assert outcome.response.closed
    assert outcome.sent_bytes < 10 * _MIB
    with limited.http() as http:  # the forwarder is fine afterwards
        assert http.get("/v1/whoami").status_code == 200


def test_a_stalled_body_gets_408_and_the_connection_closed(limited: Limited) -> None:
    """A Content-Length lie (more declared than sent) stalls the body: bounded by body_timeout_s."""
    with connect(limited.url, timeout_s=15.0) as sock:
        sock.sendall(request_head("POST", "/v1/tasks/batch", token=limited.token, content_length=1000))
        sock.sendall(b'{"task_ids": [')
        response = read_response(sock)
    assert response.status == 408
    error = _error(response.body)
    assert error["code"] == "REQUEST_TIMEOUT" and "limits.body_timeout_s" in error["message"]
    assert response.closed


def test_a_body_longer_than_declared_is_a_bad_request(limited: Limited) -> None:
    """The other Content-Length lie (less declared than sent)."""
    with connect(limited.url, timeout_s=15.0) as sock:
        body = json.dumps({"task_ids": []}).encode()
        sock.sendall(request_head("POST", "/v1/tasks/batch", token=limited.token, content_length=len(body)))
        sock.sendall(body + b"garbage that is no request\r\n\r\n")
        answer = b""
        while chunk := _recv(sock):  # until the server closes
            answer += chunk
    # the bytes past the declared length are parsed as a request: 400, and the connection closed
    assert b"HTTP/1.1 400" in answer and b"HTTP/1.1 500" not in answer


@pytest.mark.parametrize("slow", [False, True], ids=["silent", "slow"])
def test_silent_or_slow_headers_are_cut_off(limited: Limited, slow: bool) -> None:
    """A connection that sends nothing, or its headers a byte at a time, gets 408 and is closed
    after header_timeout_s (uvicorn alone keeps both open for ever)."""
    with connect(limited.url, timeout_s=10.0) as sock:
        if slow:
            sock.sendall(b"GET /v1/version HTTP/1.1\r\nHost: forwarder\r\nX-Slow: ")
            assert send_slowly(sock, b"a" * 100, interval_s=0.2, wait_s=5.0)
        answer = b""
        while chunk := _recv(sock):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")


def test_after_a_request_slow_headers_are_cut_off_too(limited: Limited) -> None:
    with connect(limited.url, timeout_s=15.0) as sock:
        sock.sendall(b"GET /v1/version HTTP/1.1\r\nHost: forwarder\r\n\r\n")
        assert read_response(sock, close_wait_s=0).status == 200
        # the next request's headers, never finished: each byte would restart uvicorn's idle timer
        assert send_slowly(sock, b"GET /v1/version HTTP/1.1\r\nX-Slow: " + b"a" * 60, interval_s=0.2, wait_s=5.0)
        answer = b""
        while chunk := _recv(sock):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")


def test_connections_above_the_limit_get_503(limited: Limited) -> None:
    held = [connect(limited.url) for _ in range(LIMITS["max_connections"])]
    try:
        with httpx.Client(base_url=limited.url) as http:
            response = http.get("/v1/version")
        assert response.status_code == 503
    finally:
        for sock in held:
            sock.close()
    with httpx.Client(base_url=limited.url) as http:
        assert http.get("/v1/version").status_code == 200


def test_pings_from_a_websocket_client_that_reads_nothing_get_no_pile_of_pongs(limited: Limited) -> None:
    """200,000 pings (25 MB of pongs owed) from a client that reads nothing: once the socket's
    write buffer is full the forwarder stops answering, so only the pongs the buffers held arrive
    when the client finally reads (uvicorn alone answers all 200,000, holding them in memory)."""
    pings = 200_000
    sock = websocket_connect(limited.url, "/v1/results/ws", limited.token)
    try:
        frames = ping_frames(1000)
        for _ in range(pings // 1000):
            sock.sendall(frames)
        received = count_pongs(sock)
    finally:
        sock.close()
    assert 0 < received < pings // 2
    with limited.http() as http:  # the forwarder is fine afterwards
        assert http.get("/v1/whoami").status_code == 200


def _identity(value: bytes) -> bytes:
    return value


def test_the_executor_splits_a_batch_above_the_submit_limit(limited: Limited) -> None:
    """20 calls of 200 kB: a batch of them is above limits.submit_body_bytes (2 MiB); the 413
    names that setting, and the Executor sends the batch again in halves."""
    with Client(url=limited.url, token=limited.token) as client:
        endpoint_id = client.register_endpoint(unique_name("offline"))["endpoint_id"]
        with Executor(endpoint_id, client=client) as executor:
            futures = [executor.submit(_identity, bytes([index]) * 200_000) for index in range(20)]
            wait_until(
                lambda: all(future.task_id for future in futures) or any(future.done() for future in futures),
                timeout_s=60.0,
                what="task ids",
            )
            failed = [future.exception() for future in futures if future.done()]
            assert failed == []  # all accepted, waiting for the endpoint
            for future in futures:
                future.cancel_remote()
    metrics = httpx.get(f"{limited.url}/metrics").text
    refused = 'taskfabric_http_requests_total{method="POST",route="/v1/endpoints/{endpoint_id}/tasks",status="413"}'
    assert refused in metrics  # the split was needed


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""
