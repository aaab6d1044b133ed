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
        "auth": {"provider": "globus", "globus_client_id": CLIENT_ID, "globus_required_scope": "taskfabric:all"},
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
