"""The `globus` auth provider against a loopback stand-in of Globus Auth's token introspection.

The forwarder runs as in production (globus-sdk's ConfidentialAppAuthClient); only the service
URL differs (`GLOBUS_SDK_SERVICE_URL_AUTH`)."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from taskfabric.forwarder.testing import ForwarderProcess, GlobusAuthStandIn
from taskfabric.testing import BrokerUnderTest, unique_name

CLIENT_ID = str(uuid.uuid4())
CLIENT_SECRET = secrets.token_urlsafe(16)
#: allowed whatever its domain (the forwarder otherwise admits only uni.example identities)
GUEST_SUB = uuid.uuid4()


@pytest.fixture(scope="module")
def globus_auth() -> Iterator[GlobusAuthStandIn]:
    with GlobusAuthStandIn(CLIENT_ID, CLIENT_SECRET) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def globus_forwarder(
    broker: BrokerUnderTest, globus_auth: GlobusAuthStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ForwarderProcess]:
    folder: Path = tmp_path_factory.mktemp("globus-forwarder")
    settings = {
        "database_url": f"sqlite:///{folder / 'forwarder.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("fw-globus"),
        "auth": {
            "provider": "globus",
            "globus_client_id": CLIENT_ID,
            "globus_required_scope": "taskfabric:all",
            "negative_cache_s": 60,
            "allowed_domains": ["uni.example"],
            "allowed_identities": [str(GUEST_SUB)],
        },
    }
    # the secret comes from the environment, as an operator would pass it
    env = {
        "GLOBUS_SDK_SERVICE_URL_AUTH": globus_auth.url,
        "TASKFABRIC_FORWARDER_AUTH_GLOBUS_CLIENT_SECRET": CLIENT_SECRET,
    }
    with ForwarderProcess(folder, settings, env=env) as process:
        yield process


def _client(process: ForwarderProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_active_tokens_are_accepted_and_cached(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    sub, token = uuid.uuid4(), secrets.token_urlsafe(32)
    globus_auth.add_token(token, sub=sub, username="ada@uni.example", scope="openid taskfabric:all")
    calls_before = globus_auth.calls
    with _client(globus_forwarder, token) as ada:
        me = ada.get("/v1/whoami")
        assert me.status_code == 200
        assert me.json() == {"user_id": str(sub), "username": "ada@uni.example", "auth": "globus"}
        # the user was created on first sight and can work
        assert ada.post("/v1/endpoints", json={"name": "ada-lab"}).status_code == 201
        assert len(ada.get("/v1/endpoints").json()["endpoints"]) == 1
    assert globus_auth.calls == calls_before + 1  # one introspection, then the cache

    url = globus_forwarder.url.replace("http://", "ws://") + "/v1/results/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=15) as stream:
        stream.send(msgpack.packb({"ping": 1}))
        assert msgpack.unpackb(stream.recv(timeout=15)) == {"pong": 1}


def test_inactive_expired_and_unscoped_tokens_are_refused(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    expired, unscoped = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    globus_auth.add_token(
        expired, sub=uuid.uuid4(), username="old@uni.example", exp=time.time() - 10, scope="taskfabric:all"
    )
    globus_auth.add_token(unscoped, sub=uuid.uuid4(), username="other@uni.example", scope="openid")
    for token in (secrets.token_urlsafe(32), expired, unscoped):
        with _client(globus_forwarder, token) as client:
            response = client.get("/v1/whoami")
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "INVALID_TOKEN"
            assert client.post("/v1/endpoints", json={"name": "nope"}).status_code == 401
    url = globus_forwarder.url.replace("http://", "ws://") + "/v1/results/ws"
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(url, additional_headers={"Authorization": f"Bearer {expired}"}),
    ):
        pass
    assert refused.value.response.status_code == 401


def test_an_unreachable_or_refusing_identity_provider_is_503_not_401(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    token = secrets.token_urlsafe(32)
    globus_auth.add_token(token, sub=uuid.uuid4(), username="bob@uni.example", scope="taskfabric:all")
    real_secret = globus_auth.client_secret
    globus_auth.client_secret = "rotated"  # Globus Auth now refuses the forwarder's client credentials
    try:
        with _client(globus_forwarder, token) as client:
            response = client.get("/v1/whoami")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "AUTH_UNAVAILABLE"
    finally:
        globus_auth.client_secret = real_secret
    with _client(globus_forwarder, token) as client:
        assert client.get("/v1/whoami").status_code == 200


def test_local_tokens_mean_nothing_to_the_globus_provider(globus_forwarder: ForwarderProcess) -> None:
    with _client(globus_forwarder, "tf_" + secrets.token_urlsafe(32)) as client:
        assert client.get("/v1/whoami").status_code == 401
    assert isinstance(globus_forwarder.pid, int)


def _whoami(process: ForwarderProcess, token: str) -> httpx.Response:
    with _client(process, token) as client:
        return client.get("/v1/whoami")


def test_tokens_issued_for_another_resource_server_are_refused(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    token = secrets.token_urlsafe(32)
    other_service = str(uuid.uuid4())  # active, right scope string, but consented for another service
    globus_auth.add_token(
        token, sub=uuid.uuid4(), username="ada2@uni.example", scope="taskfabric:all", audience=[other_service]
    )
    response = _whoami(globus_forwarder, token)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "INVALID_TOKEN"
    assert f"not issued for this service (its audience lacks {CLIENT_ID})" in response.json()["error"]["message"]


def test_a_refused_token_is_introspected_once_within_the_negative_cache_window(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    token = secrets.token_urlsafe(32)  # unknown to Globus Auth: inactive
    calls_before = globus_auth.calls
    for _ in range(5):
        assert _whoami(globus_forwarder, token).status_code == 401
    assert globus_auth.calls == calls_before + 1


def test_a_username_collision_is_a_409_and_leaves_the_holder_working(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    holder, newcomer = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    username = f"{unique_name('dup')}@uni.example"
    globus_auth.add_token(holder, sub=uuid.uuid4(), username=username, scope="taskfabric:all")
    assert _whoami(globus_forwarder, holder).status_code == 200
    # Globus Auth reassigned the username to another identity: the store still has the first one
    globus_auth.add_token(newcomer, sub=uuid.uuid4(), username=username, scope="taskfabric:all")
    refused = _whoami(globus_forwarder, newcomer)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "IDENTITY_CONFLICT"
    assert f"the username {username!r}" in refused.json()["error"]["message"]
    assert _whoami(globus_forwarder, holder).status_code == 200


def test_identities_outside_the_allowed_domains_and_identities_are_refused(
    globus_forwarder: ForwarderProcess, globus_auth: GlobusAuthStandIn
) -> None:
    eve, guest = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    globus_auth.add_token(eve, sub=uuid.uuid4(), username="eve@elsewhere.example", scope="taskfabric:all")
    globus_auth.add_token(guest, sub=GUEST_SUB, username="guest@elsewhere.example", scope="taskfabric:all")
    refused = _whoami(globus_forwarder, eve)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "IDENTITY_NOT_ALLOWED"
    assert "its domain 'elsewhere.example' is not in auth.allowed_domains" in refused.json()["error"]["message"]
    with _client(globus_forwarder, eve) as client:
        assert client.post("/v1/endpoints", json={"name": "eves-lab"}).status_code == 403
    admitted = _whoami(globus_forwarder, guest)
    assert admitted.status_code == 200, admitted.text
    assert admitted.json()["user_id"] == str(GUEST_SUB)
