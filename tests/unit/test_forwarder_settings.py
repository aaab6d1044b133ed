"""The forwarder's settings: defaults, file/environment/flag precedence, named errors, docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfabric.errors import ConfigError
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.settings import describe_settings


def test_defaults(tmp_home: Path) -> None:
    settings = ForwarderSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8470)
    assert settings.store_url == f"sqlite:///{tmp_home / 'forwarder' / 'forwarder.db'}"
    assert settings.topology_prefix == "taskfabric"
    assert settings.max_payload_bytes == settings.max_function_bytes == 10 * 1024 * 1024
    assert settings.max_batch_tasks == 10000
    assert settings.result_ttl_s == 14 * 86400
    assert settings.auth.provider == "local"
    assert settings.vhost == "/"


def test_file_then_environment_then_flags(tmp_path: Path, tmp_home: Path) -> None:
    config = tmp_path / "forwarder.yaml"
    config.write_text(
        "port: 9000\nhost: 0.0.0.0\nauth:\n  provider: globus\n  globus_client_id: abc\n"
        "  globus_required_scope: https://auth.globus.org/scopes/abc/all\n"
    )
    environ = {
        "TASKFABRIC_FORWARDER_PORT": "9100",
        "TASKFABRIC_FORWARDER_AUTH_GLOBUS_CLIENT_SECRET": "s3cret",
        "TASKFABRIC_FORWARDER_DATABASE_URL": "postgresql+psycopg://u@db/forwarder",
    }
    settings = ForwarderSettings.load(config, environ=environ, overrides={"host": "127.0.0.2", "port": None})
    assert settings.port == 9100
    assert settings.host == "127.0.0.2"
    assert settings.auth.provider == "globus"
    assert settings.auth.globus_client_id == "abc" and settings.auth.globus_client_secret == "s3cret"
    assert settings.store_url == "postgresql+psycopg://u@db/forwarder"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prot": 1}, r"prot: unknown key \(did you mean 'port'\?\)"),
        ({"port": 70000}, "port: must be at most 65535"),
        ({"max_payload_bytes": "big"}, "max_payload_bytes: expected an integer"),
        ({"auth": {"provider": "ldap"}}, "auth.provider: expected one of 'local', 'globus'"),
        ({"auth": {"provider": "globus"}}, "needs auth.globus_client_id"),
        (
            {"auth": {"provider": "globus", "globus_client_id": "abc", "globus_client_secret": "s"}},
            "auth.globus_required_scope: auth.provider 'globus' needs this service's own scope",
        ),
        ({"amqp_url": "http://x"}, "amqp_url: expected a amqp/amqps URL"),
        ({"status_period_s": 10, "endpoint_offline_after_s": 5}, "endpoint_offline_after_s must be longer"),
        ({"max_request_bytes": 1024 * 1024}, "max_request_bytes"),
        ({"topology_prefix": "bad prefix!"}, "topology_prefix: invalid topology prefix"),
    ],
)
def test_bad_values_are_named(data: dict[str, object], message: str, tmp_home: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        ForwarderSettings.from_mapping(data, source="forwarder.yaml")


def test_endpoint_broker_url_has_the_endpoints_own_credentials(tmp_home: Path) -> None:
    settings = ForwarderSettings(amqp_url="amqp://admin:pw@10.0.0.5:5672/%2F")
    url = settings.endpoint_broker_url("ep-1", "p/ss:w@rd")
    assert url == "amqp://ep-1:p%2Fss%3Aw%40rd@10.0.0.5:5672/%2F"
    public = ForwarderSettings(
        amqp_url="amqp://admin:pw@10.0.0.5:5672/%2F", endpoint_amqp_url="amqps://broker.example.org:5671/tf"
    )
    assert public.endpoint_broker_url("ep-1", "x") == "amqps://ep-1:x@broker.example.org:5671/tf"
    assert ForwarderSettings(amqp_url="amqp://a:b@h:1/tf").vhost == "tf"


def test_every_key_is_documented() -> None:
    docs = describe_settings(ForwarderSettings)
    keys = {doc.key for doc in docs}
    assert {"host", "port", "database_url", "amqp_url", "management_url", "endpoint_amqp_url", "auth.provider"} <= keys
    assert {
        "auth.globus_client_id",
        "auth.globus_client_secret",
        "auth.globus_required_scope",
        "publish_batch_tasks",
    } <= keys
    assert {
        "result_ttl_s",
        "endpoint_offline_after_s",
        "status_period_s",
        "confirm_timeout_s",
        "delivery_limit",
    } <= keys
    assert all(doc.help for doc in docs), [doc.key for doc in docs if not doc.help]


def test_quota_settings_load_from_their_section_and_environment_and_name_a_bad_key() -> None:
    settings = ForwarderSettings.load(
        environ={
            "TASKFABRIC_FORWARDER_QUOTAS_MAX_ENDPOINTS_PER_USER": "3",
            "TASKFABRIC_FORWARDER_QUOTAS_SUBMIT_BURST": "7",
        }
    )
    assert (settings.quotas.max_endpoints_per_user, settings.quotas.submit_burst) == (3, 7)
    assert settings.quotas.max_pending_tasks_per_user == 1_000_000  # the generous default
    with pytest.raises(ConfigError, match=r"quotas\.max_endpoints_per_user: must be at least 0"):
        ForwarderSettings.from_mapping({"quotas": {"max_endpoints_per_user": -1}})
    with pytest.raises(ConfigError, match=r"quotas\.consumers_per_connection: must be at most 2000"):
        ForwarderSettings.from_mapping({"quotas": {"consumers_per_connection": 5000}})


def test_the_queue_type_is_a_deployment_setting_checked_eagerly(tmp_home: Path) -> None:
    assert ForwarderSettings().queue_type == "auto"  # chosen at start: AdminBrokerLink
    assert ForwarderSettings().topology.queue_type == "quorum"  # until then, the safe one
    settings = ForwarderSettings.load(environ={"TASKFABRIC_FORWARDER_QUEUE_TYPE": "classic"})
    assert settings.queue_type == "classic"
    assert settings.topology.queue_type == "classic"
    assert settings.topology.queue_arguments()["x-queue-type"] == "classic"
    with pytest.raises(ConfigError, match=r"queue_type"):
        ForwarderSettings.from_mapping({"queue_type": "lazy"})


def test_classic_queues_are_refused_for_a_broker_of_several_urls(tmp_home: Path) -> None:
    """Several AMQP URLs name a cluster: classic queues live on one node."""
    urls = ["amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:guest@127.0.0.1:5673/"]
    with pytest.raises(ConfigError, match="queue_type quorum") as refused:
        ForwarderSettings.from_mapping({"amqp_urls": urls, "queue_type": "classic"})
    assert str(refused.value).startswith("queue_type:")
    for fine in ("quorum", "auto"):
        assert ForwarderSettings.from_mapping({"amqp_urls": urls, "queue_type": fine}).queue_type == fine
    assert ForwarderSettings.from_mapping({"amqp_urls": urls[:1], "queue_type": "classic"}).queue_type == "classic"


def test_workers_are_told_a_url_only_where_they_can_use_it(tmp_path: Path, tmp_home: Path) -> None:
    """Result uploads and arguments by reference: a plain-HTTP forwarder on a concrete address
    names itself; behind TLS, or on a wildcard address or port 0, only `result_upload_url` does."""
    from taskfabric.broker_config.certs import make_ca, make_server_certificate

    def url(**values: object) -> str | None:
        return ForwarderSettings.from_mapping({"host": "127.0.0.1", "port": 8470, **values}).worker_upload_url()

    server = make_server_certificate(make_ca(tmp_path, name="upload test CA"), tmp_path, hostnames=["127.0.0.1"])
    tls = {"cert_file": str(server.cert_file), "key_file": str(server.key_file)}
    assert url() == "http://127.0.0.1:8470"
    assert url(tls=tls) is None  # never http:// to a TLS listener, and workers may not trust its CA
    assert url(tls=tls, result_upload_url="https://compute.example.org/") == "https://compute.example.org"
    assert url(host="0.0.0.0") is None and url(port=0) is None
    assert url(worker_result_uploads=False, result_upload_url="https://compute.example.org") is None
