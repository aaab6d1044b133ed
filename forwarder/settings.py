"""The forwarder's settings: one keyword-only dataclass, loaded from YAML, environment and flags.

Precedence, lowest first: defaults, the YAML file (`--config`), environment variables
(`TASKFABRIC_FORWARDER_<KEY>`, and `TASKFABRIC_FORWARDER_AUTH_<KEY>` / `TASKFABRIC_FORWARDER_TLS_<KEY>` /
`TASKFABRIC_FORWARDER_LIMITS_<KEY>` / `TASKFABRIC_FORWARDER_QUOTAS_<KEY>` / `TASKFABRIC_FORWARDER_UI_<KEY>` /
`TASKFABRIC_FORWARDER_GLOBUS_COMPUTE_<KEY>` for the `auth`, `tls`, `limits`, `quotas`, `ui` and
`globus_compute` sections), then
command-line flags. Every key is validated eagerly; a bad key or value raises `ConfigError` naming
it. `describe_settings(ForwarderSettings)` lists every key with its help text.
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from taskfabric.broker_config import QueueType, Topology
from taskfabric.errors import ConfigError
from taskfabric.forwarder.blobs.open import check_blob_url
from taskfabric.paths import taskfabric_home
from taskfabric.settings import load_settings, load_yaml, setting, settings_from_env
from taskfabric.tls import client_ssl_context, server_ssl_context

__all__ = [
    "ENV_PREFIX",
    "AuthSettings",
    "ForwarderSettings",
    "GlobusComputeSettings",
    "LimitsSettings",
    "QuotaSettings",
    "TlsSettings",
    "UiSettings",
    "default_database_url",
]

ENV_PREFIX = "TASKFABRIC_FORWARDER_"
_AUTH_ENV_PREFIX = "TASKFABRIC_FORWARDER_AUTH_"
_TLS_ENV_PREFIX = "TASKFABRIC_FORWARDER_TLS_"
_LIMITS_ENV_PREFIX = "TASKFABRIC_FORWARDER_LIMITS_"
_QUOTAS_ENV_PREFIX = "TASKFABRIC_FORWARDER_QUOTAS_"
_UI_ENV_PREFIX = "TASKFABRIC_FORWARDER_UI_"
_GLOBUS_COMPUTE_ENV_PREFIX = "TASKFABRIC_FORWARDER_GLOBUS_COMPUTE_"
_MIB = 1024 * 1024
#: JSON carries binary values as base64: 4 bytes for every 3, plus the rest of the request
_BASE64_GROWTH = 4 / 3
_REQUEST_SLACK_BYTES = 64 * 1024
_METRICS_TOKEN_MIN_CHARS = 16
_AMQP_DEFAULT = "amqp://guest:guest@127.0.0.1:5672/%2F"
_MANAGEMENT_DEFAULT = "http://guest:guest@127.0.0.1:15672"


def default_database_url() -> str:
    """SQLite in `$TASKFABRIC_HOME/forwarder/forwarder.db`."""
    return f"sqlite:///{taskfabric_home() / 'forwarder' / 'forwarder.db'}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """How the forwarder authenticates bearer tokens."""

    provider: Literal["local", "globus"] = setting(
        "local",
        help="'local': tokens made by `taskfabric admin create-token`; 'globus': Globus Auth token introspection",
    )
    globus_client_id: str | None = setting(None, help="the forwarder's Globus Auth confidential client id")
    globus_client_secret: str | None = setting(
        None, help="its client secret (prefer the TASKFABRIC_FORWARDER_AUTH_GLOBUS_CLIENT_SECRET variable)"
    )
    globus_required_scope: str | None = setting(
        None, help="the scope string an introspected token must carry (this service's own; required for 'globus')"
    )
    cache_max_entries: int = setting(10000, help="introspected tokens kept in memory until they expire", min=0)
    cache_max_age_s: float = setting(
        300.0, help="keep an introspection result at most this long, even if the token lives longer", min=0
    )
    # --- Globus Auth hardening: audience, refusals remembered, who may use the service ---
    globus_audience: str | None = setting(
        None,
        help="an introspected token's `aud` must name this resource server (default: globus_client_id, the "
        "forwarder's own); tokens issued for other services are refused",
    )
    negative_cache_s: float = setting(
        10.0, help="a refused token is refused again for this long without asking Globus Auth (0: never)", min=0
    )
    allowed_domains: list[str] = setting(
        default_factory=list,
        help="when this or allowed_identities is set, only identities whose username is in one of these domains "
        "(ada@uni.example is in uni.example) or listed in allowed_identities may use the service (403 otherwise)",
    )
    allowed_identities: list[str] = setting(
        default_factory=list, help="Globus identity ids (UUIDs) or usernames allowed whatever their domain"
    )

    def __post_init__(self) -> None:
        if self.provider == "globus" and not (self.globus_client_id and self.globus_client_secret):
            raise ValueError("auth.provider 'globus' needs auth.globus_client_id and auth.globus_client_secret")
        if self.provider == "globus" and not self.globus_required_scope:
            raise ConfigError(
                "auth.provider 'globus' needs this service's own scope (e.g. "
                "https://auth.globus.org/scopes/<client id>/all): without it, a token consented for any use of "
                "this resource server would be accepted",
                key="auth.globus_required_scope",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """HTTPS: the forwarder serves TLS itself when `cert_file` and `key_file` are set."""

    cert_file: Path | None = setting(
        None, help="PEM certificate chain the forwarder serves (HTTPS); reloaded on SIGHUP without a restart"
    )
    key_file: Path | None = setting(None, help="PEM private key of cert_file (reloaded with it on SIGHUP)")
    client_ca_file: Path | None = setting(
        None, help="when set, clients must present a certificate signed by this CA (mutual TLS)"
    )

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "tls.key_file" if self.key_file is None else "tls.cert_file"
            raise ConfigError("tls.cert_file and tls.key_file are set together", key=missing)
        if self.client_ca_file is not None and self.cert_file is None:
            raise ConfigError("needs tls.cert_file and tls.key_file (mutual TLS is TLS)", key="tls.client_ca_file")
        if self.enabled:
            self.ssl_context()  # the files exist and load now, not at the first connection

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """A new server context from the files (`ConfigError` names the key of a bad one)."""
        if self.cert_file is None or self.key_file is None:
            raise ConfigError("TLS is not configured", key="tls.cert_file")
        return server_ssl_context(self.cert_file, self.key_file, client_ca_file=self.client_ca_file)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LimitsSettings:
    """What one connection may cost the forwarder (issue 12: nothing unauthenticated costs much).

    Body limits are checked on the request headers (Content-Length) and on the running count of a
    chunked body, before any route reads it; requests to authenticated routes are authenticated on
    their headers first. See `forwarder.limits` and `forwarder.connections`."""

    unauthenticated_body_bytes: int = setting(
        4096, help="largest request body to a route that needs no token (/v1/version, /healthz, unknown paths)", min=0
    )
    function_body_bytes: int = setting(
        16 * _MIB, help="largest body of POST /v1/functions (must fit a base64 function body of max_function_bytes)"
    )
    submit_body_bytes: int = setting(
        64 * _MIB,
        help="largest body of a task batch, POST /v1/endpoints/{id}/tasks (must fit a base64 payload of "
        "max_payload_bytes)",
    )
    lookup_body_bytes: int = setting(1 * _MIB, help="largest body of a batch lookup, POST /v1/tasks/batch", min=1024)
    header_timeout_s: float = setting(
        10.0, help="a connection must finish sending a request's headers this long after it opens or starts it", min=0.1
    )
    body_timeout_s: float = setting(
        30.0, help="longest wait for the next piece of a request body before answering 408 and closing", min=0.1
    )
    idle_timeout_s: float = setting(
        5.0, help="an idle keep-alive connection (between requests) is closed after this long", min=0.1
    )
    max_connections: int = setting(
        1000, help="open connections (and requests in progress) above which new requests get 503", min=1
    )
    ws_ping_interval_s: float = setting(20.0, help="the forwarder pings each WebSocket this often", min=0.1)
    ws_ping_timeout_s: float = setting(
        20.0, help="a WebSocket that does not answer a ping within this long is closed", min=0.1
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuotaSettings:
    """Per-user quotas and rate limits (429 with Retry-After), and what one endpoint may cost the
    shared ingest. Defaults are generous: they stop abuse, not work. 0 switches a quota off."""

    max_pending_tasks_per_user: int = setting(
        1_000_000, help="unfinished tasks (waiting or running) one user may have; 0: no limit", min=0
    )
    max_endpoints_per_user: int = setting(100, help="endpoints one user may register; 0: no limit", min=0)
    submit_requests_per_s: float = setting(
        50.0, help="submit requests per second per user (a token bucket, per forwarder replica); 0: no limit", min=0
    )
    submit_burst: int = setting(100, help="submit requests a user may send at once above the rate", min=1)
    max_result_bytes_per_day: int = setting(
        100 * 1024 * _MIB,
        help="result bytes (values and pickled exceptions) stored per user per UTC day; past it, that user's "
        "submits answer 429 until midnight UTC; 0: no limit",
        min=0,
    )
    max_result_bytes: int = setting(
        10 * _MIB,
        help="largest result value (or pickled exception) ingested; a larger one ends its task as RESULT_TOO_LARGE",
        min=1,
    )
    max_results_per_message: int = setting(
        10000,
        help="most results one broker message may carry; a larger message is refused: its tasks end as "
        "RESULT_TOO_LARGE",
        min=1,
    )
    ingest_group_results: int = setting(
        4096,
        help="fair ingest: a store transaction takes at most this many results (while several endpoints have "
        "results waiting, one message of each), so one endpoint's flood delays another's by one short transaction",
        min=1,
    )
    ingest_transaction_s: float = setting(
        0.05,
        help="fair ingest: a store transaction takes about as many results as the store writes in this long "
        "(measured as it goes), at most ingest_group_results",
        min=0.001,
    )
    ingest_contended_transaction_s: float = setting(
        0.01,
        help="fair ingest: the same while more than one endpoint sent results in the last 5 s (a result waits for "
        "the transaction in progress; short ones keep that wait short)",
        min=0.001,
    )
    consumers_per_connection: int = setting(
        1000,
        help="result consumers (one channel each) per broker connection; more endpoints open more connections "
        "(RabbitMQ allows 2047 channels per connection by default)",
        min=1,
        max=2000,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class UiSettings:
    """The web dashboard at /ui/ (docs/dashboard.md)."""

    enabled: bool = setting(True, help="serve the web dashboard at /ui/")
    admin_users: tuple[str, ...] = setting(
        (), help="user names that see the dashboard's Admin page (operators); empty: nobody"
    )
    session_max_age_s: float = setting(
        8 * 3600.0, help="a dashboard session (sign-in cookie) expires this long after sign-in", min=60
    )
    session_key_file: Path | None = setting(
        None,
        help="file holding the key that signs session cookies (made 0600 on first start); default "
        "$TASKFABRIC_HOME/forwarder/ui-session.key; replicas behind one address must share it",
    )
    sample_period_s: float = setting(
        10.0, help="how often the queue depth of every endpoint is sampled for the dashboard's charts", min=1
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlobusComputeSettings:
    """The Globus-Compute-compatible API (docs/globus-compute.md)."""

    enabled: bool = setting(False, help="serve the API the unmodified Globus Compute SDK calls (/v2, /v3)")
    token_lifetime_s: int = setting(
        48 * 3600, help="lifetime the OAuth2 token route announces (the SDK asks again after it)", min=60
    )
    result_queue_expires_s: float = setting(
        7 * 86400.0, help="a task group's result queue is deleted after this long without a consumer", min=60
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForwarderSettings:
    """Everything `taskfabric forwarder serve` can be told."""

    host: str = setting("127.0.0.1", help="address the HTTP server listens on")
    port: int = setting(8470, help="TCP port of the HTTP server (0 picks a free one)", min=0, max=65535)
    tls: TlsSettings = setting(default_factory=TlsSettings, help="HTTPS: cert_file, key_file, client_ca_file")
    allow_plaintext: bool = setting(
        False,
        help="serve plain HTTP on an address that is not loopback (without tls); a warning is logged at every start",
    )
    database_url: str | None = setting(
        None,
        help="SQLAlchemy URL of the store: sqlite:///PATH (default $TASKFABRIC_HOME/forwarder/forwarder.db) "
        "or postgresql+psycopg://user:pass@host/db",
    )
    amqp_url: str = setting(
        _AMQP_DEFAULT,
        help="the broker, with administrator credentials (declares queues, publishes tasks, reads results)",
    )
    amqp_urls: list[str] = setting(
        default_factory=list,
        help="every member of a RabbitMQ cluster, with administrator credentials, tried in turn on connection "
        "loss (same vhost and scheme); amqp_url, when also set, must be one of them; default: [amqp_url]",
    )
    management_url: str = setting(
        _MANAGEMENT_DEFAULT,
        help="the broker's management API, with administrator credentials (creates endpoint users)",
    )
    management_urls: list[str] = setting(
        default_factory=list,
        help="the management API of every cluster member, tried in turn when one cannot be reached; "
        "default: [management_url]",
    )
    endpoint_amqp_url: str | None = setting(
        None,
        help="the broker as endpoints reach it (amqp[s]://host:port/vhost, no credentials: each endpoint gets "
        "its own); default: amqp_url's host, port and vhost",
    )
    endpoint_amqp_urls: list[str] = setting(
        default_factory=list,
        help="every cluster member as endpoints reach it (as endpoint_amqp_url); default: [endpoint_amqp_url] "
        "when that is set, else the host, port and vhost of each of amqp_urls",
    )
    quorum_initial_group_size: int | None = setting(
        None,
        help="replicas of each quorum queue (x-quorum-initial-group-size; capped by the cluster's size); "
        "default: 3 when the broker cluster has 3 or more nodes, else the broker's default (all nodes)",
        min=1,
        max=99,
    )
    broker_ca_file: Path | None = setting(
        None,
        help="PEM CA certificate that signed the broker's certificate, for an amqps amqp_url (default: the "
        "system's trust store)",
    )
    endpoint_broker_ca_file: Path | None = setting(
        None,
        help="PEM CA certificate endpoints should trust for the broker (sent with each registration, so agents "
        "verify an amqps broker signed by a private CA); default: broker_ca_file when endpoints reach the broker "
        "over amqps",
    )
    topology_prefix: str = setting("taskfabric", help="prefix of every exchange and queue name")
    delivery_limit: int = setting(5, help="deliveries of one message before the broker dead-letters it", min=1)
    queue_type: Literal["auto", "quorum", "classic"] = setting(
        "auto",
        help="type of the per-endpoint queues: quorum (replicated; required on a cluster), classic (durable, "
        "persistent and confirmed: crash-safe on a single node, a faster hop; returns counted by the consumers), "
        "or auto: classic when the management API lists one broker node, else quorum. Existing queues keep "
        "their type until rebuilt (docs/operator.md)",
    )
    auth: AuthSettings = setting(default_factory=AuthSettings, help="authentication")
    max_payload_bytes: int = setting(10 * _MIB, help="largest task payload accepted", min=1)
    max_function_bytes: int = setting(10 * _MIB, help="largest function body accepted", min=1)
    max_batch_tasks: int = setting(10000, help="most tasks in one submit request", min=1)
    max_request_bytes: int = setting(
        64 * _MIB,
        help="largest request body of an authenticated route without a limit of its own in `limits` (must fit a "
        "base64 payload or function body)",
        min=1024,
    )
    max_metadata_bytes: int = setting(64 * 1024, help="largest endpoint metadata (as JSON)", min=2)
    publish_batch_tasks: int = setting(256, help="most tasks carried by one AMQP message", min=1)
    publish_batch_bytes: int = setting(
        4 * _MIB, help="AMQP messages stop growing past this many payload bytes (one big task may exceed it)", min=1
    )
    result_ttl_s: float = setting(14 * 86400.0, help="how long finished tasks are kept", min=1)
    # --- large results out of the SQL store (issue 15) ---
    blob_threshold_bytes: int = setting(
        64 * 1024, help="results larger than this are kept in the blob store, not in the SQL store", min=0
    )
    blob_store_url: str | None = setting(
        None,
        help="where large results are kept: file:///PATH (default: blobs/ in the forwarder's data folder) or "
        "s3://BUCKET[/PREFIX] (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or boto3's usual chain)",
    )
    blob_s3_endpoint_url: str | None = setting(
        None, help="an S3-compatible server for an s3:// blob_store_url (default: AWS)"
    )
    blob_s3_region: str | None = setting(None, help="the S3 region for an s3:// blob_store_url (default: us-east-1)")
    # --- large arguments by reference (issue 15, PUT/GET /v1/data/{sha256}) ---
    max_data_bytes: int = setting(
        1024 * _MIB, help="largest argument a client may upload by reference (PUT /v1/data)", min=1
    )
    data_ref_ttl_s: float = setting(
        14 * 86400.0,
        help="how long a data reference may be read by workers (capped by result_ttl_s: the blob is swept then)",
        min=1,
    )
    data_ref_key_file: Path | None = setting(
        None, help="the HMAC key signing data references (default: data-ref.key in the forwarder's data folder)"
    )
    # --- large results uploaded by workers (issue 15, PUT /v1/tasks/{id}/result-blob) ---
    worker_result_uploads: bool = setting(
        True,
        help="workers upload results larger than blob_threshold_bytes straight to this forwarder's blob store "
        "(only a reference rides the broker); needs result_upload_url or a fixed host and port",
    )
    upload_memory_bytes: int = setting(
        128 * _MIB,
        help="results workers uploaded are also kept in memory, up to this many bytes in all, until their result is "
        "reported, and pushed to waiting clients on the results stream (no download request); 0: clients download "
        "every uploaded result",
        min=0,
    )
    upload_push_bytes: int = setting(
        8 * _MIB, help="largest uploaded result kept in memory and pushed on the results stream", min=0
    )
    result_upload_url: str | None = setting(
        None,
        help="this forwarder's URL as endpoints' workers reach it, for result uploads and arguments by reference "
        "(default: http://host:port when the forwarder serves plain HTTP, host is not a wildcard address and port is "
        "not 0)",
    )
    cleanup_period_s: float = setting(3600.0, help="how often expired tasks are deleted", min=1)
    endpoint_offline_after_s: float = setting(
        30.0, help="an endpoint without a status report for this long is offline", min=0.1
    )
    status_period_s: float = setting(5.0, help="how often endpoints are told to report their status", min=0.1)
    status_flush_s: float = setting(1.0, help="endpoint status reports are written at most this often", min=0)
    confirm_timeout_s: float = setting(15.0, help="bounded wait for the broker to confirm a publish", min=0.1)
    broker_connect_timeout_s: float = setting(
        15.0, help="at start, how long to wait for the broker before giving up", min=0.1
    )
    result_prefetch: int = setting(32, help="unacknowledged result messages per endpoint consumer", min=1)
    ingest_batch_messages: int = setting(64, help="most broker messages stored in one transaction", min=1)
    endpoint_sync_period_s: float = setting(
        10.0, help="how often result consumers are reconciled with the store (other replicas' endpoints)", min=0.1
    )
    queue_check_period_s: float = setting(
        15.0,
        help="how often endpoint queues are checked for damage a broker crash left (a quorum queue without "
        "leader, a missing queue) and rebuilt; 0: never",
        min=0,
    )
    queue_check_confirmations: int = setting(
        2, help="a queue must look broken this many checks in a row before it is rebuilt", min=1
    )
    function_cache_bytes: int = setting(64 * _MIB, help="memory for cached function bodies", min=0)
    stream_poll_s: float = setting(
        5.0, help="results streams also poll the store this often (results ingested by other replicas); 0: never"
    )
    replica_fanout: bool = setting(
        True,
        help="on PostgreSQL, tell the other forwarder replicas through the broker which tasks this one finished "
        "(their results streams get them in milliseconds, not at their next store poll)",
    )
    lease_ttl_s: float = setting(
        30.0,
        help="once-only jobs (expiring results, rebuilding broken queues) run on the replica holding their lease "
        "in the store; a replica that dies loses its leases after this long",
        min=1,
    )
    stream_buffer_bytes: int = setting(
        64 * _MIB, help="a results stream whose unsent results exceed this is closed (the client re-subscribes)"
    )
    ws_max_message_bytes: int = setting(16 * _MIB, help="largest WebSocket message a client may send", min=1024)
    db_read_threads: int = setting(2, help="threads for store reads (writes have one thread)", min=1, max=64)
    metrics_token: str | None = setting(
        None,
        help="bearer token a Prometheus scrape of /metrics must send (at least 16 characters); unset: /metrics "
        "answers only when `host` is a loopback address (prefer the TASKFABRIC_FORWARDER_METRICS_TOKEN variable)",
    )
    metrics_cache_s: float = setting(
        5.0, help="/metrics reads unfinished-task counts and endpoint states from the store at most this often", min=0
    )
    # --- request limits and connection timeouts (issue 12) ---
    limits: LimitsSettings = setting(
        default_factory=LimitsSettings,
        help="per-route body limits, header/body/idle timeouts, connection limit, WebSocket caps",
    )
    # --- audit log (issue 12: revocation, files and logs) ---
    audit_log_file: Path | None = setting(
        None,
        help="JSON-lines audit log of logins, token, user and endpoint changes (0600); default: audit.jsonl next "
        "to a SQLite store, else $TASKFABRIC_HOME/forwarder/audit.jsonl",
    )
    # --- per-user quotas and fair ingest (issue 12 item 4)
    quotas: QuotaSettings = setting(
        default_factory=QuotaSettings, help="per-user quotas and rate limits, result size limits, fair ingest"
    )
    # the web dashboard (forwarder/ui/)
    ui: UiSettings = setting(default_factory=UiSettings, help="the web dashboard: admin_users, sessions")
    globus_compute: GlobusComputeSettings = setting(
        default_factory=GlobusComputeSettings, help="the Globus-Compute-compatible API: enabled"
    )

    def __post_init__(self) -> None:
        if self.database_url is None:
            object.__setattr__(self, "database_url", default_database_url())
        if self.blob_store_url is None:
            object.__setattr__(self, "blob_store_url", f"file://{(self.data_dir / 'blobs').absolute()}")
        try:
            check_blob_url(str(self.blob_store_url))
        except ValueError as exc:
            raise ConfigError(str(exc), key="blob_store_url") from None
        if self.blob_s3_endpoint_url is not None:
            _check_url(self.blob_s3_endpoint_url, ("http", "https"), "blob_s3_endpoint_url")
        if self.result_upload_url is not None:
            _check_url(self.result_upload_url, ("http", "https"), "result_upload_url")
        if self.endpoint_offline_after_s <= self.status_period_s:
            raise ValueError("endpoint_offline_after_s must be longer than status_period_s")
        needed = int(max(self.max_payload_bytes, self.max_function_bytes) * _BASE64_GROWTH) + _REQUEST_SLACK_BYTES
        if self.max_request_bytes < needed:
            raise ValueError(
                f"max_request_bytes ({self.max_request_bytes}) must be at least {needed} to fit one base64-encoded "
                "payload or function body of the configured maximum size"
            )
        try:
            Topology(prefix=self.topology_prefix, delivery_limit=self.delivery_limit)
        except ValueError as exc:
            raise ConfigError(str(exc), key="topology_prefix") from None
        if self.metrics_token is not None and len(self.metrics_token) < _METRICS_TOKEN_MIN_CHARS:
            raise ConfigError(f"must be at least {_METRICS_TOKEN_MIN_CHARS} characters long", key="metrics_token")
        _check_broker(self)
        _check_body_limits(self)

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "settings") -> ForwarderSettings:
        """Validate a mapping of keys (as in the YAML file)."""
        return load_settings(cls, data, source=source)

    @classmethod
    def from_file(cls, path: Path) -> ForwarderSettings:
        """Load a YAML file (no environment, no flags)."""
        return cls.from_mapping(load_yaml(path), source=str(path))

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ForwarderSettings:
        """File, then environment, then `overrides` (flags; None values are ignored)."""
        data: dict[str, Any] = dict(load_yaml(path)) if path is not None else {}
        data.update(settings_from_env(cls, ENV_PREFIX, environ))
        for section, section_cls, prefix in (
            ("auth", AuthSettings, _AUTH_ENV_PREFIX),
            ("tls", TlsSettings, _TLS_ENV_PREFIX),
            ("limits", LimitsSettings, _LIMITS_ENV_PREFIX),
            ("quotas", QuotaSettings, _QUOTAS_ENV_PREFIX),
            ("ui", UiSettings, _UI_ENV_PREFIX),
            ("globus_compute", GlobusComputeSettings, _GLOBUS_COMPUTE_ENV_PREFIX),
        ):
            section_env = settings_from_env(section_cls, prefix, environ)
            if section_env:
                current = data.get(section)
                data[section] = {**(current if isinstance(current, dict) else {}), **section_env}
        data.update({key: value for key, value in (overrides or {}).items() if value is not None})
        source = f"{path} + environment" if path is not None else "environment and flags"
        return cls.from_mapping(data, source=source)

    # --- derived values -----------------------------------------------------------------

    @property
    def broker_urls(self) -> list[str]:
        """Every broker URL the forwarder may connect to (`amqp_urls`, else `[amqp_url]`)."""
        return list(self.amqp_urls) or [self.amqp_url]

    @property
    def broker_management_urls(self) -> list[str]:
        """Every management API URL (`management_urls`, else `[management_url]`)."""
        return list(self.management_urls) or [self.management_url]

    @property
    def endpoint_urls(self) -> list[str]:
        """The broker URLs as endpoints reach them, without credentials."""
        if self.endpoint_amqp_urls:
            return list(self.endpoint_amqp_urls)
        if self.endpoint_amqp_url is not None:
            return [self.endpoint_amqp_url]
        return self.broker_urls

    @property
    def store_url(self) -> str:
        """The database URL (never None after construction)."""
        return str(self.database_url)

    @property
    def data_dir(self) -> Path:
        """The forwarder's data folder: a SQLite store's folder, else `$TASKFABRIC_HOME/forwarder`."""
        url = self.store_url
        if url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///")).expanduser().parent
        return taskfabric_home() / "forwarder"

    @property
    def data_ref_key_path(self) -> Path:
        """`data_ref_key_file`, or its default in the forwarder's data folder."""
        return self.data_ref_key_file if self.data_ref_key_file is not None else self.data_dir / "data-ref.key"

    @property
    def audit_log_path(self) -> Path:
        """`audit_log_file`, or its default: the forwarder's data folder (a SQLite store's folder)."""
        if self.audit_log_file is not None:
            return self.audit_log_file
        return self.data_dir / "audit.jsonl"

    @property
    def vhost(self) -> str:
        """The broker virtual host named by `amqp_url`."""
        path = urllib.parse.urlsplit(self.amqp_url).path
        return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"

    @property
    def topology(self) -> Topology:
        """The deployment's broker topology (with `queue_type: auto`, quorum until the forwarder's
        broker link chooses at start: `AdminBrokerLink.topology`)."""
        queue_type: QueueType = "classic" if self.queue_type == "classic" else "quorum"
        return Topology(prefix=self.topology_prefix, delivery_limit=self.delivery_limit, queue_type=queue_type)

    @property
    def broker_ssl_context(self) -> ssl.SSLContext | None:
        """The context verifying the broker for an amqps `amqp_url` (None for amqp)."""
        if urllib.parse.urlsplit(self.amqp_url).scheme != "amqps":
            return None
        return client_ssl_context(self.broker_ca_file, key="broker_ca_file")

    @property
    def management_ssl_context(self) -> ssl.SSLContext | None:
        """For an https `management_url`: verified against `broker_ca_file` when set."""
        if urllib.parse.urlsplit(self.management_url).scheme != "https" or self.broker_ca_file is None:
            return None
        return client_ssl_context(self.broker_ca_file, key="broker_ca_file")

    def worker_upload_url(self) -> str | None:
        """This forwarder's URL for endpoints' workers: where they upload large results and fetch
        arguments passed by reference (None: results go through the broker, and clients send
        arguments inside their tasks). Only a plain-HTTP forwarder on a concrete address names
        itself: behind TLS, workers may not trust its certificate (or have a client one), so
        `result_upload_url` must say where and how they reach it."""
        if not self.worker_result_uploads:
            return None
        if self.result_upload_url is not None:
            return self.result_upload_url.rstrip("/")
        if self.tls.enabled or self.port == 0 or self.host in ("", "0.0.0.0", "::"):
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def endpoint_broker_ca_pem(self) -> str | None:
        """The PEM text of the CA endpoints should trust for the broker (sent at registration)."""
        ca_file = self.endpoint_broker_ca_file
        endpoint_url = self.endpoint_amqp_url or self.amqp_url
        if ca_file is None and urllib.parse.urlsplit(endpoint_url).scheme == "amqps":
            ca_file = self.broker_ca_file
        return ca_file.read_text() if ca_file is not None else None

    def endpoint_broker_url(self, username: str, password: str) -> str:
        """The AMQP URL an endpoint uses, with its own credentials (the first of
        `endpoint_broker_urls`)."""
        return self.endpoint_broker_urls(username, password)[0]

    def endpoint_broker_urls(self, username: str, password: str) -> list[str]:
        """Every AMQP URL an endpoint may use (one per cluster member), with its own credentials."""
        return [_with_credentials(url, username, password) for url in self.endpoint_urls]


def _settle_url_list(
    settings: ForwarderSettings, single_key: str, list_key: str, schemes: tuple[str, ...], default: str
) -> None:
    """Check a list of URLs; the single URL key becomes its first entry unless it was set to one of
    them (a single URL set to something else is a contradiction, not a preference)."""
    urls: list[str] = getattr(settings, list_key)
    for index, url in enumerate(urls):
        _check_url(url, schemes, f"{list_key}[{index}]")
    if not urls:
        return
    single: str = getattr(settings, single_key)
    if single == default:
        object.__setattr__(settings, single_key, urls[0])
    elif single not in urls:
        raise ConfigError(f"{single_key} is not one of {list_key}: set only {list_key}", key=single_key)


def _check_same_broker(urls: list[str], key: str) -> None:
    """All cluster members are reached alike: one scheme, one virtual host."""
    shapes = {(urllib.parse.urlsplit(url).scheme, urllib.parse.urlsplit(url).path or "/") for url in urls}
    if len(shapes) > 1:
        raise ConfigError("every URL must have the same scheme and virtual host", key=key)


def _with_credentials(url: str, username: str, password: str) -> str:
    base = urllib.parse.urlsplit(url)
    port = f":{base.port}" if base.port else ""
    host = base.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{urllib.parse.quote(username, safe='')}:{urllib.parse.quote(password, safe='')}@{host}{port}"
    path = base.path if len(base.path) > 1 else "/%2F"
    return urllib.parse.urlunsplit((base.scheme, netloc, path, base.query, ""))


def _check_url(url: str, schemes: tuple[str, ...], key: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"expected a {'/'.join(schemes)} URL with a host", key=key)


def _check_body_limits(settings: ForwarderSettings) -> None:
    """The per-route body limits must fit the largest function body and payload, base64-encoded."""
    limits = settings.limits
    for key, limit, largest in (
        ("limits.function_body_bytes", limits.function_body_bytes, settings.max_function_bytes),
        ("limits.submit_body_bytes", limits.submit_body_bytes, settings.max_payload_bytes),
    ):
        needed = int(largest * _BASE64_GROWTH) + _REQUEST_SLACK_BYTES
        if limit < needed:
            raise ConfigError(f"must be at least {needed} to fit one base64-encoded body of the maximum size", key=key)


def _check_broker(settings: ForwarderSettings) -> None:
    """The broker's URLs (one, or a cluster's several), the queue type they allow, the CA files."""
    _check_url(settings.amqp_url, ("amqp", "amqps"), "amqp_url")
    _check_url(settings.management_url, ("http", "https"), "management_url")
    if settings.endpoint_amqp_url is not None:
        _check_url(settings.endpoint_amqp_url, ("amqp", "amqps"), "endpoint_amqp_url")
    _settle_url_list(settings, "amqp_url", "amqp_urls", ("amqp", "amqps"), _AMQP_DEFAULT)
    _settle_url_list(settings, "management_url", "management_urls", ("http", "https"), _MANAGEMENT_DEFAULT)
    for index, url in enumerate(settings.endpoint_amqp_urls):
        _check_url(url, ("amqp", "amqps"), f"endpoint_amqp_urls[{index}]")
    _check_same_broker(settings.broker_urls, "amqp_urls")
    _check_same_broker(settings.endpoint_urls, "endpoint_amqp_urls")
    _check_queue_type(settings)
    if settings.broker_ca_file is not None:
        client_ssl_context(settings.broker_ca_file, key="broker_ca_file")
    if settings.endpoint_broker_ca_file is not None:
        client_ssl_context(settings.endpoint_broker_ca_file, key="endpoint_broker_ca_file")


def _check_queue_type(settings: ForwarderSettings) -> None:
    """Classic queues live on one node: refuse them for a broker of several nodes (several AMQP
    URLs name a cluster, where `auto` means quorum too: see `AdminBrokerLink._queue_type`, which
    also refuses classic queues at start when the management API lists more than one node)."""
    if settings.queue_type == "classic" and len(settings.broker_urls) > 1:
        raise ConfigError(
            "classic queues live on one node: a broker of several nodes (amqp_urls) needs queue_type quorum",
            key="queue_type",
        )
