"""Functions over HTTP on a real forwarder (SQLite and PostgreSQL): register, dedupe, read, delete."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from taskfabric.forwarder.testing import ForwarderApi

Users = Callable[[Any], ForwarderApi]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_register_get_list_delete(forwarder: Any, users: Users) -> None:
    alice = users(forwarder)
    body = b"cloudpickle bytes of square" + uuid.uuid4().bytes
    created = alice.http.post("/v1/functions", json={"name": "square", "body": _b64(body), "python_version": "3.11.7"})
    assert created.status_code == 201
    function_id = created.json()["function_id"]
    assert created.json()["content_hash"] == hashlib.sha256(body).hexdigest()
    assert str(uuid.UUID(function_id)) == function_id

    info = alice.http.get(f"/v1/functions/{function_id}").json()
    assert info["name"] == "square"
    assert info["python_version"] == "3.11.7"
    assert info["size_bytes"] == len(body)
    assert "body" not in info
    with_body = alice.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"}).json()
    assert base64.b64decode(with_body["body"]) == body

    listed = alice.http.get("/v1/functions").json()["functions"]
    assert [f["function_id"] for f in listed] == [function_id]

    assert alice.http.delete(f"/v1/functions/{function_id}").status_code == 204
    gone = alice.http.get(f"/v1/functions/{function_id}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "NOT_FOUND"
    assert alice.http.get("/v1/functions").json()["functions"] == []
    assert alice.http.delete(f"/v1/functions/{function_id}").status_code == 404


def test_same_body_same_owner_is_deduplicated_by_content_hash(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    body = b"same body" + uuid.uuid4().bytes
    first = alice.http.post("/v1/functions", json={"name": "a", "body": _b64(body)})
    again = alice.http.post("/v1/functions", json={"name": "another name", "body": _b64(body)})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = alice.http.post("/v1/functions", json={"name": "a", "body": _b64(body + b"!")})
    assert other.status_code == 201
    assert other.json()["function_id"] != first.json()["function_id"]
    # another user's identical body is another function
    bobs = bob.http.post("/v1/functions", json={"name": "a", "body": _b64(body)})
    assert bobs.status_code == 201
    assert bobs.json()["function_id"] != first.json()["function_id"]
    assert bobs.json()["content_hash"] == first.json()["content_hash"]
    assert len(alice.http.get("/v1/functions").json()["functions"]) == 2


def test_another_users_private_function_is_unseen_and_unchanged(forwarder: Any, users: Users) -> None:
    alice, bob = users(forwarder), users(forwarder)
    function_id = alice.register_function(b"alice's" + uuid.uuid4().bytes)
    for response in (
        bob.http.get(f"/v1/functions/{function_id}"),
        bob.http.get(f"/v1/functions/{function_id}", params={"include_body": "true"}),
        bob.http.delete(f"/v1/functions/{function_id}"),
    ):
        # a private function of another user answers as an unknown id does (issue 13)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert bob.http.get("/v1/functions").json()["functions"] == []
    assert alice.http.get(f"/v1/functions/{function_id}").status_code == 200


def test_bad_function_requests(forwarder: Any, users: Users) -> None:
    alice = users(forwarder)
    limit = forwarder.settings.max_function_bytes
    too_big = alice.http.post("/v1/functions", json={"name": "big", "body": _b64(b"x" * (limit + 1))})
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert str(limit) in too_big.json()["error"]["message"]
    assert alice.http.post("/v1/functions", json={"name": "x", "body": "not base64!"}).status_code == 400
    assert alice.http.post("/v1/functions", json={"name": "x", "body": ""}).status_code == 400
    assert alice.http.post("/v1/functions", json={"name": "", "body": _b64(b"x")}).status_code == 422
    assert alice.http.post("/v1/functions", json={"name": "a\x00b", "body": _b64(b"x")}).status_code == 400
    assert alice.http.post("/v1/functions", json={"body": _b64(b"x")}).status_code == 422
    malformed = alice.http.post("/v1/functions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "INVALID_REQUEST"
    assert alice.http.get("/v1/functions/not-a-uuid").status_code == 400
    assert alice.http.get(f"/v1/functions/{uuid.uuid4()}").status_code == 404
    assert alice.http.get("/v1/functions").json()["functions"] == []
