"""`taskfabric forwarder serve|settings|migrate|check-config` and `taskfabric admin
create-user|create-token|list-users|list-tokens|revoke-token|disable-user|enable-user|delete-user`,
`taskfabric admin dead-letters list|show|requeue|purge`.

Thin click commands: they build `ForwarderSettings` (file, environment, flags) and call plain
functions (`serve` here, `admin.*`), which tests call directly. Errors map to named exit codes in
the root command.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from taskfabric.errors import ConfigError, TaskfabricError
from taskfabric.forwarder import admin as admin_functions
from taskfabric.forwarder.deployment import (
    check_config,
    load_serve_settings,
    migrate_store,
    prepare_store,
    require_store,
)
from taskfabric.forwarder.records import DeadLetterRecord, TokenRecord
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.gc_tuning import tune_for_service
from taskfabric.tls import is_loopback_host, reload_certificate

__all__ = ["admin", "check_plaintext", "forwarder", "serve"]

log = logging.getLogger(__name__)

_LISTEN_BACKLOG = 2048
#: in-flight submissions may wait up to confirm_timeout_s for the broker: let them finish
_SHUTDOWN_GRACE_S = 5.0


def serve(settings: ForwarderSettings, *, announce: Callable[[str], None] = click.echo, migrate: bool = False) -> None:
    """Run the forwarder (one process, uvicorn) until SIGINT/SIGTERM. With `port` 0 a free port is
    chosen; either way the address is announced once the socket listens. With `tls` it serves
    HTTPS and loads its certificate and key again on SIGHUP. Plain HTTP on an address that is not
    loopback is refused (`ConfigError`) unless `allow_plaintext` is set. A store with an older
    schema is refused (`StoreNeedsMigration`) unless `migrate`; an empty one gets the schema."""
    import uvicorn
    import uvicorn.config

    from taskfabric.forwarder.app import create_app
    from taskfabric.forwarder.connections import apply_connection_limits

    check_plaintext(settings)
    prepare_store(settings, migrate=migrate)
    ssl_context = settings.tls.ssl_context() if settings.tls.enabled else None
    app = create_app(settings)
    sock = _listen(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        ws="websockets-sansio" if "websockets-sansio" in uvicorn.config.WS_PROTOCOLS else "websockets",
        ws_max_size=settings.ws_max_message_bytes,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.confirm_timeout_s + _SHUTDOWN_GRACE_S),
        server_header=False,
    )
    apply_connection_limits(config, settings)  # timeouts, connection limit, WebSocket caps
    config.load()
    _quiet_denied_handshakes()
    config.ssl = ssl_context  # the one context the listener uses: SIGHUP reloads its certificate
    server = uvicorn.Server(config)
    tune_for_service()
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "https" if ssl_context is not None else "http"
    previous_hup = _reload_on_sighup(settings, ssl_context)
    announce(f"taskfabric forwarder listening on {scheme}://{shown_host}:{port}")
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits when the lifespan startup fails: report why, below
        pass
    finally:
        sock.close()
        if previous_hup is not None:
            signal.signal(signal.SIGHUP, previous_hup)
    startup_error = getattr(app.state, "startup_error", None)
    if isinstance(startup_error, TaskfabricError):
        raise startup_error
    if not server.started:
        raise TaskfabricError(f"the forwarder did not start: {startup_error or 'see the log above'}")


class _DeniedHandshakeFilter(logging.Filter):
    """uvicorn's websockets-sansio protocol logs "ASGI callable returned without completing
    handshake." at ERROR after every handshake refused with an HTTP response (401/403 with a body),
    which is a completed handshake. The results route logs each refusal itself, at INFO with the
    peer's address; this demotes uvicorn's line to DEBUG (dropped unless DEBUG is on)."""

    _MESSAGE = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or record.getMessage() != self._MESSAGE:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def _quiet_denied_handshakes() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _DeniedHandshakeFilter) for existing in uvicorn_log.filters):
        uvicorn_log.addFilter(_DeniedHandshakeFilter())


def check_plaintext(settings: ForwarderSettings) -> None:
    """Refuse plain HTTP on an address that is not loopback unless `allow_plaintext` says so
    explicitly (then warn: tokens and task data cross the network unencrypted)."""
    if settings.tls.enabled or is_loopback_host(settings.host):
        return
    if not settings.allow_plaintext:
        raise ConfigError(
            f"refusing to serve plain HTTP on {settings.host!r}, which is not a loopback address: tokens and task "
            "data would cross the network unencrypted. Set tls.cert_file and tls.key_file to serve HTTPS, or set "
            "allow_plaintext: true if a TLS proxy in front of the forwarder or a trusted network protects it",
            key="host",
        )
    log.warning(
        "serving plain HTTP on %s (allow_plaintext is set): tokens and task data cross the network unencrypted",
        settings.host,
    )


def _reload_on_sighup(settings: ForwarderSettings, context: ssl.SSLContext | None) -> Any:
    """Install a SIGHUP handler that reloads the certificate into `context`; returns the previous
    handler (None when there is nothing to reload)."""
    tls = settings.tls
    if context is None or tls.cert_file is None or tls.key_file is None:
        return None
    cert_file, key_file = tls.cert_file, tls.key_file

    def reload(signum: int, frame: Any) -> None:
        try:
            reload_certificate(context, cert_file, key_file)
        except ConfigError as exc:
            log.error("SIGHUP: kept the old certificate: %s", exc)
            return
        log.info("SIGHUP: reloaded the certificate %s; new connections get it", cert_file)

    return signal.signal(signal.SIGHUP, reload)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TaskfabricError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(_LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


# --- options ------------------------------------------------------------------------------


def _store_options(fn: Any) -> Any:
    fn = click.option(
        "--database-url", default=None, help="SQLAlchemy URL of the store (default: SQLite in $TASKFABRIC_HOME)."
    )(fn)
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="TASKFABRIC_FORWARDER_CONFIG",
        help="YAML settings file (keys: `taskfabric forwarder settings`).",
    )(fn)


def _settings(config_file: Path | None, **overrides: Any) -> ForwarderSettings:
    """The settings of an `admin` command. Without a settings file the store must already exist:
    the built-in default location would otherwise get a stray, empty store nobody serves."""
    settings = ForwarderSettings.load(config_file, overrides=overrides)
    if config_file is None:
        require_store(settings)
    return settings


# --- taskfabric forwarder -----------------------------------------------------------------


@click.group()
def forwarder() -> None:
    """The forwarder service: HTTP API, task store, routing through RabbitMQ."""


@forwarder.command("serve")
@_store_options
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default 8470; 0 picks a free one).")
@click.option("--amqp-url", default=None, help="Broker URL with administrator credentials.")
@click.option("--management-url", default=None, help="Broker management API URL with administrator credentials.")
@click.option("--endpoint-amqp-url", default=None, help="The broker as endpoints reach it (no credentials).")
@click.option("--topology-prefix", default=None, help="Prefix of every exchange and queue name.")
@click.option("--migrate", is_flag=True, help="Upgrade a store with an older schema first (back it up before).")
def serve_command(
    *,
    config_file: Path | None,
    database_url: str | None,
    host: str | None,
    port: int | None,
    amqp_url: str | None,
    management_url: str | None,
    endpoint_amqp_url: str | None,
    topology_prefix: str | None,
    migrate: bool,
) -> None:
    """Serve the HTTP API until interrupted (SIGINT / SIGTERM stop it gracefully). amqp_url and
    database_url must be named (settings file, environment or flags): there are no defaults."""
    overrides = {
        "database_url": database_url,
        "host": host,
        "port": port,
        "amqp_url": amqp_url,
        "management_url": management_url,
        "endpoint_amqp_url": endpoint_amqp_url,
        "topology_prefix": topology_prefix,
    }
    serve(load_serve_settings(config_file, overrides=overrides), migrate=migrate)


@forwarder.command("migrate")
@_store_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document: {database, before, after}.")
def migrate_command(config_file: Path | None, database_url: str | None, as_json: bool) -> None:
    """Upgrade the store's schema to this taskfabric's (creating it in an empty database when a
    settings file names it). Back the store up first; stop or keep serving forwarders of this
    version only. A store newer than this taskfabric is refused."""
    settings = ForwarderSettings.load(config_file, overrides={"database_url": database_url})
    report = migrate_store(settings, create=config_file is not None)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report)))
    elif report.changed:
        click.echo(f"migrated the store at {report.database}: schema version {report.before} -> {report.after}")
    else:
        click.echo(f"the store at {report.database} is up to date (schema version {report.after})")


@forwarder.command("check-config")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="TASKFABRIC_FORWARDER_CONFIG",
    help="YAML settings file to check (with the environment, as `serve` reads them).",
)
@click.option("--offline", is_flag=True, help="Only validate the settings; reach neither store nor broker.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: {summary, checks, ok}.")
def check_config_command(config_file: Path | None, offline: bool, as_json: bool) -> None:
    """Validate the settings `serve` would use and print a summary (no secrets); unless --offline,
    also check that the store and the broker answer. Exits 4 for an invalid setting (naming the
    key), 1 when a check fails, 0 when all is well. Changes nothing."""
    from taskfabric.exit_codes import RET_ERROR

    report = check_config(config_file, offline=offline)
    if as_json:
        checks = [dataclasses.asdict(check) for check in report.checks]
        click.echo(json.dumps({"summary": report.summary, "checks": checks, "ok": report.ok}))
    else:
        click.echo(f"settings {'of ' + str(config_file) if config_file else 'from the environment'}: valid")
        for key, value in report.summary.items():
            click.echo(f"  {key:<22} {value}")
        for check in report.checks:
            click.echo(f"{check.name:<11} {'ok' if check.ok else 'FAILED'}: {check.detail}")
    if not report.ok:
        raise SystemExit(RET_ERROR)


@forwarder.command("status")
@click.option(
    "--url",
    default="http://127.0.0.1:8470",
    show_default=True,
    envvar="TASKFABRIC_URL",
    help="The forwarder's base URL.",
)
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="Seconds per request.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="TASKFABRIC_CA_FILE",
    help="PEM CA that signed an https forwarder's certificate (default: the system's trust store).",
)
def status_command(url: str, timeout_s: float, as_json: bool, ca_file: Path | None) -> None:
    """Is the forwarder alive (/healthz) and ready (/readyz: store and broker)? Exits 0 when ready,
    1 when it answers but is not ready, 3 when nothing answers."""
    from taskfabric.exit_codes import RET_ERROR, RET_STOPPED
    from taskfabric.forwarder.health import probe_forwarder

    status = probe_forwarder(url, timeout_s=timeout_s, ca_file=ca_file)
    if as_json:
        click.echo(json.dumps(status))
    else:
        click.echo(_status_text(status))
    if not status["reachable"]:
        raise SystemExit(RET_STOPPED)
    if not status["ready"]:
        raise SystemExit(RET_ERROR)


def _status_text(status: dict[str, Any]) -> str:
    if not status["reachable"]:
        return f"forwarder {status['url']}: not reachable ({status['error']})"
    lines = [f"forwarder {status['url']}: {'ready' if status['ready'] else 'NOT READY'}"]
    lines.append(f"  alive   {'yes' if status['alive'] else 'no'}")
    lines.extend(f"  {name:<7} {value}" for name, value in sorted(status["checks"].items()))
    return "\n".join(lines)


@forwarder.command("settings")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of {key, type, default, help}.")
def settings_command(as_json: bool) -> None:
    """List every settings key with its type, default and meaning."""
    from taskfabric.settings import describe_settings

    docs = describe_settings(ForwarderSettings)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(doc) for doc in docs]))
        return
    for doc in docs:
        click.echo(f"{doc.key}  ({doc.type}, default {doc.default})\n    {doc.help}")


# --- taskfabric admin ---------------------------------------------------------------------


@click.group()
def admin() -> None:
    """Manage the forwarder's local users and tokens (works on the store directly)."""


@admin.command("create-user")
@click.argument("name")
@_store_options
def create_user_command(name: str, config_file: Path | None, database_url: str | None) -> None:
    """Add a local user NAME."""
    user = admin_functions.create_user(_settings(config_file, database_url=database_url), name)
    click.echo(f"created user {user.username} ({user.user_id})")


@admin.command("create-token")
@click.argument("name")
@click.option("--description", default="", help="What the token is for (its label in list-tokens).")
@click.option("--expires-in", default=None, help="Refuse the token after this long: 30d, 12h, 90m, 3600s.")
@_store_options
def create_token_command(
    name: str, description: str, expires_in: str | None, config_file: Path | None, database_url: str | None
) -> None:
    """Create a bearer token for local user NAME and print it (only this once)."""
    expires_in_s = admin_functions.parse_duration(expires_in) if expires_in is not None else None
    token = admin_functions.create_token(
        _settings(config_file, database_url=database_url), name, description=description, expires_in_s=expires_in_s
    )
    click.echo(token)


@admin.command("revoke-token")
@click.argument("name")
@click.option("--all", "revoke_all", is_flag=True, help="Revoke every token of NAME.")
@click.option("--id", "token_id", default=None, help="Revoke the token with this id (see list-tokens).")
@_store_options
def revoke_token_command(
    name: str, revoke_all: bool, token_id: str | None, config_file: Path | None, database_url: str | None
) -> None:
    """Revoke a token of local user NAME (by --id, or the token itself read from a hidden prompt
    or standard input, so it stays out of the shell history), or all of NAME's tokens with --all.
    A running forwarder refuses a revoked token, and closes results streams opened with it,
    within a minute."""
    if revoke_all and token_id is not None:
        raise click.UsageError("give either --all or --id, not both")
    token = None if revoke_all or token_id is not None else click.prompt("token to revoke", hide_input=True, err=True)
    revoked = admin_functions.revoke_tokens(
        _settings(config_file, database_url=database_url), name, token=token, token_id=token_id
    )
    click.echo(f"revoked {revoked} token(s) of {name}")


@admin.command("list-tokens")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of tokens.")
@_store_options
def list_tokens_command(name: str, as_json: bool, config_file: Path | None, database_url: str | None) -> None:
    """List local user NAME's tokens: id, prefix, label, created, expires and last used (UTC)."""
    records = admin_functions.list_tokens(_settings(config_file, database_url=database_url), name)
    if as_json:
        click.echo(json.dumps([_token_json(record) for record in records]))
        return
    for record in records:
        expires = _utc(record.expires_at) if record.expires_at is not None else "never"
        used = _utc(record.last_used_at) if record.last_used_at is not None else "never"
        click.echo(
            f"{record.token_id}  {record.prefix or '?':<8}  created {_utc(record.created_at)}  expires {expires}  "
            f"last used {used}  {record.label}"
        )


def _token_json(record: TokenRecord) -> dict[str, Any]:
    return {
        "token_id": record.token_id,
        "prefix": record.prefix,
        "label": record.label,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "last_used_at": record.last_used_at,
    }


_AUTH_OPTION = click.option(
    "--auth", type=click.Choice(["local", "globus"]), default="local", show_default=True, help="The user's kind."
)
_BROKER_OPTION = click.option(
    "--management-url", default=None, help="Broker management API URL with administrator credentials."
)


@admin.command("disable-user")
@click.argument("name")
@_AUTH_OPTION
@_BROKER_OPTION
@_store_options
def disable_user_command(
    name: str, auth: str, management_url: str | None, config_file: Path | None, database_url: str | None
) -> None:
    """Disable user NAME: refuse its tokens, close its results streams, cut off its endpoints'
    broker connections and fail its unfinished tasks (USER_DISABLED). Undo with enable-user."""
    settings = _settings(config_file, database_url=database_url, management_url=management_url)
    done = admin_functions.disable_user(settings, name, auth=auth)
    click.echo(f"disabled {name}: {done.endpoints} endpoint(s) cut off, {done.failed_tasks} task(s) failed")


@admin.command("enable-user")
@click.argument("name")
@_AUTH_OPTION
@_store_options
def enable_user_command(name: str, auth: str, config_file: Path | None, database_url: str | None) -> None:
    """Accept disabled user NAME's tokens again (its endpoints must register again)."""
    admin_functions.enable_user(_settings(config_file, database_url=database_url), name, auth=auth)
    click.echo(f"enabled {name}")


@admin.command("delete-user")
@click.argument("name")
@_AUTH_OPTION
@_BROKER_OPTION
@_store_options
def delete_user_command(
    name: str, auth: str, management_url: str | None, config_file: Path | None, database_url: str | None
) -> None:
    """Delete user NAME with its tokens, functions and endpoints: as disable-user (tasks fail
    USER_DELETED), then the records (also its groups, its group memberships and what was shared
    with it or its groups)."""
    settings = _settings(config_file, database_url=database_url, management_url=management_url)
    done = admin_functions.delete_user(settings, name, auth=auth)
    click.echo(f"deleted {name}: {done.endpoints} endpoint(s) cut off, {done.failed_tasks} task(s) failed")


@admin.command("list-users")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of users.")
@_store_options
def list_users_command(as_json: bool, config_file: Path | None, database_url: str | None) -> None:
    """List users with their number of tokens (and `disabled` for disabled users)."""
    users = admin_functions.list_users(_settings(config_file, database_url=database_url))
    if as_json:
        records = [
            {
                "user_id": str(user.user_id),
                "username": user.username,
                "auth": user.auth,
                "tokens": user.tokens,
                "disabled_at": user.disabled_at,
            }
            for user in users
        ]
        click.echo(json.dumps(records))
        return
    for user in users:
        disabled = "  disabled" if user.disabled_at is not None else ""
        click.echo(f"{user.username:<32} {user.auth:<7} {user.tokens:>3} token(s)  {user.user_id}{disabled}")


# --- taskfabric admin dead-letters --------------------------------------------------------


@admin.group("dead-letters")
def dead_letters() -> None:
    """Inspect, re-queue and purge the dead letters the forwarder keeps (one per task)."""


@dead_letters.command("list")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@_store_options
def list_dead_letters_command(limit: int, as_json: bool, config_file: Path | None, database_url: str | None) -> None:
    """List kept dead letters, newest first."""
    records = admin_functions.list_dead_letters(_settings(config_file, database_url=database_url), limit=limit)
    if as_json:
        click.echo(json.dumps({"dead_letters": [_dead_letter_json(record) for record in records]}))
        return
    for record in records:
        when = _utc(record.created_at)
        click.echo(f"{record.dead_letter_id}  {when}  task {record.task_id or '-'}  {record.reason[:100]}")


@dead_letters.command("show")
@click.argument("dead_letter_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@_store_options
def show_dead_letter_command(
    dead_letter_id: str, as_json: bool, config_file: Path | None, database_url: str | None
) -> None:
    """Show one kept dead letter: its task, endpoint, reason and what its message holds."""
    details = admin_functions.show_dead_letter(_settings(config_file, database_url=database_url), dead_letter_id)
    document = {
        **_dead_letter_json(details.record),
        "task_status": details.task_status.value if details.task_status else None,
        "message": details.summary,
    }
    if as_json:
        click.echo(json.dumps(document))
        return
    for key, value in document.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")


@dead_letters.command("requeue")
@click.argument("dead_letter_id")
@click.option("--amqp-url", default=None, help="Broker URL with administrator credentials.")
@click.option("--management-url", default=None, help="Broker management API URL with administrator credentials.")
@_store_options
def requeue_dead_letter_command(
    dead_letter_id: str,
    amqp_url: str | None,
    management_url: str | None,
    config_file: Path | None,
    database_url: str | None,
) -> None:
    """Publish a kept task message again to its endpoint's task queue (only if the task has not
    finished), then forget the entry."""
    settings = _settings(config_file, database_url=database_url, amqp_url=amqp_url, management_url=management_url)
    task_id = admin_functions.requeue_dead_letter(settings, dead_letter_id)
    click.echo(f"re-queued task {task_id}")


@dead_letters.command("purge")
@click.option(
    "--before",
    default=None,
    help="Only entries kept before this time: seconds since the epoch, or ISO 8601 (UTC without an offset).",
)
@_store_options
def purge_dead_letters_command(before: str | None, config_file: Path | None, database_url: str | None) -> None:
    """Delete kept dead letters (all, or those kept before --before)."""
    cutoff = _timestamp(before) if before is not None else None
    purged = admin_functions.purge_dead_letters(_settings(config_file, database_url=database_url), before=cutoff)
    click.echo(f"purged {purged} dead letter(s)")


def _dead_letter_json(record: DeadLetterRecord) -> dict[str, Any]:
    return {
        "dead_letter_id": str(record.dead_letter_id),
        "task_id": str(record.task_id) if record.task_id else None,
        "endpoint_id": str(record.endpoint_id) if record.endpoint_id else None,
        "owner_id": str(record.owner_id) if record.owner_id else None,
        "reason": record.reason,
        "deliveries": record.deliveries,
        "queue": record.queue,
        "created_at": record.created_at,
    }


def _utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(text: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 time (UTC when it has no offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither seconds since the epoch nor an ISO 8601 time", param_hint="--before"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()
