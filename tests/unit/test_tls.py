"""TLS settings and refusals that need no network: loopback rules, the client's refusal of plaintext
to a remote host, the forwarder's TLS settings (validated eagerly, naming the bad key) and its
refusal to serve plain HTTP off loopback, which CA an agent trusts, certificate files."""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskfabric.broker_config.certs import CertificateFiles, certificate_serial, make_ca, make_server_certificate
from taskfabric.client import Client
from taskfabric.client.config import ClientConfig, client_config_path
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.errors import ConfigError
from taskfabric.forwarder.cli import check_plaintext, serve
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.protocol import BrokerAccess, EndpointRegistered, render
from taskfabric.tls import INSECURE_ENV, client_ssl_context, is_loopback_host, reload_certificate, require_secure_url
from taskfabric.transport import RabbitTransport


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateFiles, CertificateFiles]:
    folder = tmp_path_factory.mktemp("certs")
    ca = make_ca(folder)
    return ca, make_server_certificate(ca, folder, hostnames=["localhost", "127.0.0.1"])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TASKFABRIC_HOME", str(tmp_path / "home"))
    for name in ("TASKFABRIC_URL", "TASKFABRIC_TOKEN", "TASKFABRIC_CA_FILE", INSECURE_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


# --- loopback and plaintext ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.invalid", False),
        ("localhost.example.org", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("url", ["http://example.invalid", "ws://example.invalid:80/v1", "http://10.1.2.3:8470"])
def test_plaintext_to_a_remote_host_is_refused_with_why_and_how(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        require_secure_url(url, allow_insecure=False)
    message = str(caught.value)
    assert "not a loopback address" in message
    assert "allow_insecure=True" in message and INSECURE_ENV in message and "ca_file" in message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8470", "http://localhost:1", "ws://[::1]:9/x", "https://example.invalid", "wss://a.b"]
)
def test_loopback_or_tls_urls_pass(url: str) -> None:
    require_secure_url(url, allow_insecure=False)


def test_allow_insecure_lets_plaintext_through() -> None:
    require_secure_url("http://example.invalid", allow_insecure=True)


def test_client_refuses_http_to_a_remote_name_before_any_network_io(home: Path) -> None:
    # example.invalid can never resolve: an error other than ConfigError would mean a connection was tried
    with pytest.raises(ConfigError, match=r"refusing to talk to the forwarder at http://example\.invalid"):
        Client(url="http://example.invalid", token="t")


def test_client_allows_insecure_by_argument_or_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Client(url="http://example.invalid", token="t", allow_insecure=True).close()
    monkeypatch.setenv(INSECURE_ENV, "1")
    Client(url="http://example.invalid", token="t").close()
    # an explicit False wins over the environment
    with pytest.raises(ConfigError):
        Client(url="http://example.invalid", token="t", allow_insecure=False)


def test_client_ca_file_from_argument_environment_and_saved_file(
    home: Path, certs: tuple[CertificateFiles, CertificateFiles], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, _server = certs
    with Client(url="https://example.invalid", token="t", ca_file=ca.cert_file) as client:
        assert client.config.ca_file == str(ca.cert_file)
        assert _ca_names(client.ssl_context) == ["taskfabric private CA"]
    ClientConfig(url="https://saved.invalid", token="t", ca_file=str(ca.cert_file)).save()
    assert json.loads(client_config_path().read_text())["ca_file"] == str(ca.cert_file)
    assert ClientConfig.resolve().ca_file == str(ca.cert_file)
    # the saved CA belongs to the saved URL: another URL keeps the system's trust store
    assert ClientConfig.resolve("https://other.invalid").ca_file is None
    monkeypatch.setenv("TASKFABRIC_CA_FILE", "/env/ca.pem")
    assert ClientConfig.resolve("https://other.invalid").ca_file == "/env/ca.pem"


def test_client_with_a_missing_ca_file_names_it(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ca_file: .*does not exist"):
        Client(url="https://example.invalid", token="t", ca_file=tmp_path / "nope.pem")


def test_login_takes_ca_file(home: Path) -> None:
    from taskfabric.client.cli import login

    result = CliRunner().invoke(login, ["--url", "https://x.invalid", "--token", "t", "--ca-file", "/missing/ca.pem"])
    assert result.exit_code == 2 and "--ca-file" in result.output


def _ca_names(context: ssl.SSLContext) -> list[str]:
    return [dict(item[0] for item in cert["subject"])["commonName"] for cert in context.get_ca_certs()]


# --- the forwarder's settings and its refusal of plain HTTP ---------------------------------


def _tls(server: CertificateFiles, **extra: object) -> dict[str, object]:
    return {"tls": {"cert_file": str(server.cert_file), "key_file": str(server.key_file), **extra}}


def test_tls_settings_load_and_make_a_server_context(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    _ca, server = certs
    settings = ForwarderSettings.from_mapping(_tls(server))
    assert settings.tls.enabled
    assert settings.tls.ssl_context().verify_mode == ssl.CERT_NONE
    assert not ForwarderSettings.from_mapping({}).tls.enabled


def test_client_ca_file_requires_client_certificates(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    ca, server = certs
    settings = ForwarderSettings.from_mapping(_tls(server, client_ca_file=str(ca.cert_file)))
    assert settings.tls.ssl_context().verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        ({"cert_file": "/nope/cert.pem"}, "tls.cert_file", "does not exist"),
        ({"key_file": "/nope/key.pem"}, "tls.key_file", "does not exist"),
        ({"key_file": None}, "tls.key_file", "set together"),
        ({"client_ca_file": "/nope/ca.pem"}, "tls.client_ca_file", "does not exist"),
        ({"cert_file": "KEY"}, "tls.cert_file", "not a PEM certificate"),
        ({"key_file": "CERT"}, "tls.key_file", "not a PEM private key"),
        ({"key_file": "OTHER_KEY"}, "tls.key_file", "does not load as the private key"),
    ],
)
def test_bad_tls_settings_name_the_key(
    certs: tuple[CertificateFiles, CertificateFiles], tmp_path: Path, change: dict[str, str | None], key: str, why: str
) -> None:
    ca, server = certs
    replacements = {"KEY": str(server.key_file), "CERT": str(server.cert_file), "OTHER_KEY": str(ca.key_file)}
    tls = {"cert_file": str(server.cert_file), "key_file": str(server.key_file)}
    for name, value in change.items():
        if value is None:
            del tls[name]
        else:
            tls[name] = replacements.get(value, value)
    with pytest.raises(ConfigError) as caught:
        ForwarderSettings.from_mapping({"tls": tls})
    assert str(caught.value).startswith(f"{key}: ") and why in str(caught.value)


def test_tls_settings_from_the_environment(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    _ca, server = certs
    environ = {
        "TASKFABRIC_FORWARDER_TLS_CERT_FILE": str(server.cert_file),
        "TASKFABRIC_FORWARDER_TLS_KEY_FILE": str(server.key_file),
    }
    settings = ForwarderSettings.load(environ=environ)
    assert settings.tls.cert_file == server.cert_file and settings.tls.key_file == server.key_file


def test_broker_ca_files_are_checked_and_sent_to_endpoints(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    ca, _server = certs
    with pytest.raises(ConfigError, match=r"^broker_ca_file: "):
        ForwarderSettings.from_mapping({"broker_ca_file": "/nope/ca.pem"})
    with pytest.raises(ConfigError, match=r"^endpoint_broker_ca_file: "):
        ForwarderSettings.from_mapping({"endpoint_broker_ca_file": "/nope/ca.pem"})
    amqps = {"amqp_url": "amqps://u:p@broker.example:5671/%2F", "broker_ca_file": str(ca.cert_file)}
    settings = ForwarderSettings.from_mapping(amqps)
    assert settings.endpoint_broker_ca_pem() == ca.cert_file.read_text()  # endpoints reach the broker over amqps
    assert settings.broker_ssl_context is not None
    assert _ca_names(settings.broker_ssl_context) == ["taskfabric private CA"]
    plain = ForwarderSettings.from_mapping({**amqps, "endpoint_amqp_url": "amqp://broker.example:5672/%2F"})
    assert plain.endpoint_broker_ca_pem() is None
    assert ForwarderSettings.from_mapping({}).broker_ssl_context is None


def test_forwarder_refuses_plain_http_off_loopback() -> None:
    # were the refusal missing, serve() would find no broker here and stop within a second
    nowhere = {"amqp_url": "amqp://u:p@127.0.0.1:1/%2F", "broker_connect_timeout_s": 0.5, "port": 0}
    settings = ForwarderSettings.from_mapping({"host": "0.0.0.0", **nowhere})
    with pytest.raises(ConfigError) as caught:
        check_plaintext(settings)
    assert str(caught.value).startswith("host: refusing to serve plain HTTP on '0.0.0.0'")
    assert "tls.cert_file" in str(caught.value) and "allow_plaintext" in str(caught.value)
    # serve() refuses before it builds anything or binds a socket
    with pytest.raises(ConfigError, match="refusing to serve plain HTTP"):
        serve(settings, announce=lambda line: None)


def test_forwarder_allows_plaintext_explicitly_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="taskfabric.forwarder.cli"):
        check_plaintext(ForwarderSettings.from_mapping({"host": "0.0.0.0", "allow_plaintext": True}))
    assert any("plain HTTP on 0.0.0.0" in record.getMessage() for record in caplog.records)


def test_forwarder_on_loopback_or_with_tls_needs_no_permission(
    certs: tuple[CertificateFiles, CertificateFiles], caplog: pytest.LogCaptureFixture
) -> None:
    _ca, server = certs
    with caplog.at_level(logging.WARNING, logger="taskfabric.forwarder.cli"):
        check_plaintext(ForwarderSettings.from_mapping({"host": "127.0.0.1"}))
        check_plaintext(ForwarderSettings.from_mapping({"host": "0.0.0.0", **_tls(server)}))
    assert not caplog.records


def test_reload_keeps_the_old_certificate_when_the_new_pair_is_bad(
    certs: tuple[CertificateFiles, CertificateFiles], tmp_path: Path
) -> None:
    ca, server = certs
    context = ForwarderSettings.from_mapping(_tls(server)).tls.ssl_context()
    with pytest.raises(ConfigError, match=r"tls\.key_file"):
        reload_certificate(context, server.cert_file, ca.key_file)
    fresh = make_server_certificate(ca, tmp_path, hostnames=["localhost"])
    reload_certificate(context, fresh.cert_file, fresh.key_file)


# --- brokers and endpoints ----------------------------------------------------------------


def test_an_ssl_context_needs_an_amqps_url(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    ca, _server = certs
    with pytest.raises(ValueError, match="amqps"):
        RabbitTransport("amqp://u:p@127.0.0.1:5672/%2F", ssl_context=client_ssl_context(ca.cert_file))


def _broker(url: str, ca_certificate: str | None = None) -> BrokerAccess:
    return BrokerAccess(
        amqp_url=url,
        username="u",
        task_queue="t",
        result_queue="r",
        results_exchange="x",
        dead_letter_exchange="d",
        ca_certificate=ca_certificate,
    )


def _connection(url: str, ca_certificate: str | None = None) -> EndpointConnection:
    return EndpointConnection.of(uuid.uuid4(), _broker(url, ca_certificate))


def test_which_ca_an_agent_trusts(certs: tuple[CertificateFiles, CertificateFiles], tmp_path: Path) -> None:
    ca, _server = certs
    owners_ca = make_ca(tmp_path, name="the owner's CA")
    assert _connection("amqp://u:p@b:5672/%2F", ca.cert_file.read_text()).broker_ssl_context() is None
    sent = _connection("amqps://u:p@b:5671/%2F", ca.cert_file.read_text())
    context = sent.broker_ssl_context()
    assert context is not None and _ca_names(context) == ["taskfabric private CA"]
    context = sent.broker_ssl_context(owners_ca.cert_file)  # the owner's broker_ca_file wins
    assert context is not None and _ca_names(context) == ["the owner's CA"]
    context = _connection("amqps://u:p@b:5671/%2F").broker_ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_registration_answer_carries_the_ca_into_the_connection_file(
    certs: tuple[CertificateFiles, CertificateFiles], tmp_path: Path
) -> None:
    ca, _server = certs
    answer = render(
        EndpointRegistered(
            endpoint_id=uuid.uuid4(), name="e", broker=_broker("amqps://u:p@b:5671/%2F", ca.cert_file.read_text())
        )
    )
    connection = EndpointConnection.from_registration(answer)
    connection.save(tmp_path / "connection.json")
    assert EndpointConnection.load(tmp_path / "connection.json").ca_certificate == ca.cert_file.read_text()


def test_endpoint_broker_ca_file_is_validated(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    ca, _server = certs
    assert EndpointConfig.from_mapping({"broker_ca_file": str(ca.cert_file)}).broker_ca_file == ca.cert_file
    with pytest.raises(ConfigError, match=r"broker_ca_file: .*does not exist"):
        EndpointConfig.from_mapping({"broker_ca_file": "/nope/ca.pem"})


# --- certificates ---------------------------------------------------------------------------


def test_server_certificate_is_signed_by_the_ca_for_its_names(certs: tuple[CertificateFiles, CertificateFiles]) -> None:
    from cryptography import x509

    ca, server = certs
    certificate = x509.load_pem_x509_certificate(server.cert_file.read_bytes())
    authority = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    certificate.verify_directly_issued_by(authority)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert certificate_serial(server.cert_file.read_bytes()) == certificate.serial_number
    assert oct(server.key_file.stat().st_mode & 0o777) == "0o600"
