"""TLS everywhere, for real: a private RabbitMQ node with a TLS listener (`RabbitNode(tls=True)`,
what `taskfabric broker up --tls` starts), a forwarder process serving HTTPS with a certificate
made here and reaching the broker over amqps, a client (HTTP and the results stream) and an
endpoint agent (with managers and workers) connecting through them. Also: a wrong CA refused, a
certificate reloaded on SIGHUP, the forwarder refusing plain HTTP off loopback."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from taskfabric.broker_config.certs import (
    CertificateFiles,
    certificate_serial,
    make_ca,
    make_client_certificate,
    make_server_certificate,
)
from taskfabric.broker_config.cli import broker as broker_command
from taskfabric.broker_config.node import NodeInfo, RabbitNode
from taskfabric.client import Client, Executor
from taskfabric.client.cli import login_to
from taskfabric.client.config import client_config_path
from taskfabric.client.stream import ResultStream
from taskfabric.endpoint_agent.local import configure_endpoint, register_endpoint, start_endpoint, stop_endpoint
from taskfabric.errors import BrokerUnavailable, ServiceError
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.processes import free_port
from taskfabric.testing import unique_name, wait_until
from taskfabric.tls import client_ssl_context
from taskfabric.transport import RabbitTransport

pytestmark = pytest.mark.slow

ENDPOINT_SETTINGS: dict[str, Any] = {
    "heartbeat_period_s": 0.5,
    "heartbeat_threshold_s": 3.0,
    "status_period_s": 0.5,
    "drain_timeout_s": 20.0,
    "scaling": {"workers_per_node": 1, "strategy_period_s": 0.5},
    "provider": {"type": "LocalProvider", "init_blocks": 1, "min_blocks": 1, "max_blocks": 1},
}


def square(x: int) -> int:
    return x * x


@dataclasses.dataclass
class TlsFabric:
    node: RabbitNode
    info: NodeInfo
    ca: CertificateFiles
    server: CertificateFiles
    forwarder: ForwarderProcess
    settings: ForwarderSettings
    token: str
    other_ca: CertificateFiles

    @property
    def url(self) -> str:
        return self.forwarder.url

    def client(self, **kwargs: Any) -> Client:
        return Client(url=self.url, token=self.token, **{"ca_file": self.ca.cert_file, **kwargs})


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsFabric]:
    folder = tmp_path_factory.mktemp("tls")
    node = RabbitNode(folder / "node", tls=True)
    info = node.start()
    assert info.amqps_url is not None and info.ca_file is not None
    ca = make_ca(folder / "pki", name="forwarder test CA")
    server = make_server_certificate(ca, folder / "pki", hostnames=["localhost", "127.0.0.1"])
    values = {
        "host": "127.0.0.1",
        "tls": {"cert_file": str(server.cert_file), "key_file": str(server.key_file)},
        "database_url": f"sqlite:///{folder / 'fw.db'}",
        "amqp_url": info.amqps_url,  # the forwarder's own link is TLS too
        "broker_ca_file": info.ca_file,
        "management_url": info.management_url,
        "topology_prefix": unique_name("tls"),
        "status_period_s": 0.5,
        "endpoint_offline_after_s": 3.0,
        "status_flush_s": 0.2,
    }
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    for name in ("TASKFABRIC_URL", "TASKFABRIC_TOKEN", "TASKFABRIC_CA_FILE", "TASKFABRIC_ALLOW_INSECURE"):
        patch.delenv(name, raising=False)
    settings = ForwarderSettings.from_mapping(values)
    try:
        with ForwarderProcess(folder / "forwarder", values, ca_file=ca.cert_file) as forwarder:
            username = unique_name("researcher")
            create_user(settings, username)
            yield TlsFabric(
                node,
                info,
                ca,
                server,
                forwarder,
                settings,
                create_token(settings, username),
                make_ca(folder / "other", name="some other CA"),
            )
    finally:
        patch.undo()
        node.stop()


def _served_serial(fabric: TlsFabric) -> int:
    parts = urllib.parse.urlsplit(fabric.url)
    context = client_ssl_context(fabric.ca.cert_file)
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return certificate_serial(der)


def _connections_over_tls(fabric: TlsFabric) -> dict[str, bool]:
    """The broker's own view: each client connection's name and whether it uses TLS."""
    parts = urllib.parse.urlsplit(fabric.info.management_url)
    answer = httpx.get(
        f"http://127.0.0.1:{parts.port}/api/connections",
        auth=(parts.username or "", parts.password or ""),
        timeout=10,
    )
    answer.raise_for_status()
    return {
        str(connection.get("client_properties", {}).get("connection_name")): bool(connection["ssl"])
        for connection in answer.json()
    }


# --- the round trip -----------------------------------------------------------------------


def test_tasks_round_trip_through_tls_everywhere(fabric: TlsFabric) -> None:
    assert fabric.url.startswith("https://127.0.0.1:")
    name = unique_name("ep")
    configure_endpoint(name, settings=ENDPOINT_SETTINGS)
    try:
        with fabric.client() as client:
            connection = register_endpoint(name, client)
            assert connection.amqp_url.startswith("amqps://")
            assert connection.ca_certificate == Path(str(fabric.info.ca_file)).read_text()
            start_endpoint(name, detach=True)
            endpoint_id = str(connection.endpoint_id)
            wait_until(
                lambda: (
                    (status := client.get_endpoint_status(endpoint_id))["status"] == "online" and status.get("workers")
                ),
                timeout_s=90,
                interval_s=0.2,
                what="the endpoint online over amqps",
            )
            with Executor(endpoint_id, client=client) as executor:  # results come over wss://
                futures = [executor.submit(square, i) for i in range(20)]
                assert [future.result(timeout=120) for future in futures] == [i * i for i in range(20)]
        agent = f"taskfabric-agent-{endpoint_id}"
        # the management API lists a connection only after its next statistics update (seconds)
        wait_until(
            lambda: {agent, "taskfabric-forwarder"} <= set(_connections_over_tls(fabric)),
            timeout_s=30,
            interval_s=0.5,
            what="the management API listing the agent's and the forwarder's connections",
        )
        seen = _connections_over_tls(fabric)
        assert seen.get(agent) is True, seen
        assert seen.get("taskfabric-forwarder") is True, seen
    finally:
        stop_endpoint(name, timeout_s=60)


def test_login_saves_the_ca_file_for_client(fabric: TlsFabric) -> None:
    identity = login_to(fabric.url, fabric.token, ca_file=str(fabric.ca.cert_file))
    assert identity["username"]
    with Client() as client:  # URL, token and CA from the saved file
        assert client.config.ca_file == str(fabric.ca.cert_file)
        assert client.whoami()["username"] == identity["username"]


# --- refusals -----------------------------------------------------------------------------


def test_a_forwarder_signed_by_another_ca_is_refused(fabric: TlsFabric) -> None:
    client_config_path().unlink(missing_ok=True)  # no CA saved by `login` either
    for ca_file in (fabric.other_ca.cert_file, None):  # a wrong private CA; the system's trust store
        with fabric.client(ca_file=ca_file) as client, pytest.raises(ServiceError) as caught:
            client.whoami()
        assert caught.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_the_results_stream_refuses_another_ca(fabric: TlsFabric, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskfabric.client.stream")
    wrong = ResultStream(
        fabric.url, fabric.token, lambda results: None, ssl_context=client_ssl_context(fabric.other_ca.cert_file)
    )
    right = ResultStream(
        fabric.url, fabric.token, lambda results: None, ssl_context=client_ssl_context(fabric.ca.cert_file)
    )
    wrong.start()
    right.start()
    try:
        assert right.wait_connected(30)
        wait_until(
            lambda: any("CERTIFICATE_VERIFY_FAILED" in record.getMessage() for record in caplog.records),
            timeout_s=30,
            what="the results stream to refuse the certificate",
        )
        assert not wrong.wait_connected(0)
    finally:
        wrong.close()
        right.close()


def test_a_broker_signed_by_another_ca_is_refused(fabric: TlsFabric) -> None:
    assert fabric.info.amqps_url is not None
    refused = RabbitTransport(fabric.info.amqps_url, ssl_context=client_ssl_context(fabric.other_ca.cert_file))
    with pytest.raises(BrokerUnavailable, match=r"TLS with the broker failed: .*CERTIFICATE_VERIFY_FAILED"):
        refused.start(wait_s=10)
    accepted = RabbitTransport(fabric.info.amqps_url, ssl_context=client_ssl_context(fabric.info.ca_file))
    accepted.start(wait_s=10)
    accepted.close()


def test_forwarder_serve_refuses_plain_http_on_every_interface(tmp_path: Path) -> None:
    env = {**os.environ, "TASKFABRIC_HOME": str(tmp_path), "TASKFABRIC_FORWARDER_BROKER_CONNECT_TIMEOUT_S": "1"}
    env.pop("TASKFABRIC_FORWARDER_ALLOW_PLAINTEXT", None)
    nowhere = f"127.0.0.1:{free_port()}"  # were the refusal missing, it would reach no broker and stop
    command = ["forwarder", "serve", "--host", "0.0.0.0", "--port", "0", "--amqp-url", f"amqp://u:p@{nowhere}/%2F"]
    command += ["--database-url", f"sqlite:///{tmp_path / 'fw.db'}"]  # serve has no default store
    done = subprocess.run(
        [sys.executable, "-m", "taskfabric", *command, "--management-url", f"http://u:p@{nowhere}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "host: refusing to serve plain HTTP on '0.0.0.0'" in done.stderr + done.stdout


# --- certificate reload and the broker command ---------------------------------------------------


def test_sighup_reloads_the_certificate(fabric: TlsFabric) -> None:
    before = _served_serial(fabric)
    assert before == certificate_serial(fabric.server.cert_file.read_bytes())
    renewed = make_server_certificate(
        fabric.ca, fabric.server.cert_file.parent, hostnames=["localhost", "127.0.0.1"], stem="server"
    )
    after = certificate_serial(renewed.cert_file.read_bytes())
    assert after != before
    assert fabric.forwarder.pid is not None
    os.kill(fabric.forwarder.pid, signal.SIGHUP)
    wait_until(lambda: _served_serial(fabric) == after, timeout_s=30, what="the new certificate to be served")
    with fabric.client() as client:  # the same process, still serving
        assert client.version()


def test_broker_up_tls_prints_the_amqps_url_and_ca_file(fabric: TlsFabric) -> None:
    result = CliRunner().invoke(broker_command, ["up", "--tls", "--json", "--dir", str(fabric.node.directory)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["amqps_url"] == fabric.info.amqps_url and document["ca_file"] == fabric.info.ca_file
    context = client_ssl_context(document["ca_file"])
    with (
        socket.create_connection(("127.0.0.1", fabric.info.amqps_port or 0), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# --- mutual TLS -----------------------------------------------------------------------------------


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> dict[str, Any]:
    """One real TLS connection on loopback; what the server saw: the client's certificate or an error."""
    seen: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            connection, _address = listener.accept()
            with connection:
                try:
                    with server_context.wrap_socket(connection, server_side=True) as tls:
                        seen["peer"] = tls.getpeercert()
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError) as exc:
                    seen["error"] = str(exc)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            try:
                with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.recv(2)
            except (ssl.SSLError, OSError):
                pass  # the server's verdict is what matters
        server.join(10)
    return seen


def test_client_ca_file_requires_a_client_certificate_signed_by_it(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "pki")
    server = make_server_certificate(ca, tmp_path / "pki", hostnames=["localhost"])
    alice = make_client_certificate(ca, tmp_path / "pki", name="alice")
    tls = {"cert_file": str(server.cert_file), "key_file": str(server.key_file), "client_ca_file": str(ca.cert_file)}
    server_context = ForwarderSettings.from_mapping({"tls": tls}).tls.ssl_context()  # what `serve` listens with

    anonymous = _handshake(server_context, client_ssl_context(ca.cert_file))
    assert "peer" not in anonymous and "CERTIFICATE" in anonymous["error"].upper()

    with_certificate = client_ssl_context(ca.cert_file)
    with_certificate.load_cert_chain(str(alice.cert_file), str(alice.key_file))
    accepted = _handshake(server_context, with_certificate)
    assert "error" not in accepted
    assert dict(item[0] for item in accepted["peer"]["subject"])["commonName"] == "alice"
