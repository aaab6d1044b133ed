"""Operating a forwarder's store and settings: what `forwarder migrate`, `forwarder check-config`,
`serve` and the `admin` commands do before they touch anything.

- Nothing silently reaches another system: `serve` needs `amqp_url`, `database_url` and
  `management_url` named explicitly (settings file, environment or flag), never the built-in
  local defaults (guest on 127.0.0.1, a SQLite file in $TASKFABRIC_HOME).
- Schema upgrades are explicit: `migrate_store` (the `forwarder migrate` command, or `serve
  --migrate`); `serve` and `admin` refuse an older store and every command refuses a newer one.
- `admin` commands without a settings file never create a store (`require_store`).

These are plain functions; the click commands in `forwarder/cli.py` call them and tests call them
directly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskfabric.errors import ConfigError, TaskfabricError
from taskfabric.forwarder.settings import ENV_PREFIX, ForwarderSettings
from taskfabric.forwarder.store import SchemaStatus, Store
from taskfabric.forwarder.store.engine import redact_db_url
from taskfabric.settings import load_yaml
from taskfabric.transport import redact_url

if TYPE_CHECKING:
    from taskfabric.forwarder.broker import AdminBrokerLink

__all__ = [
    "REQUIRED_SERVE_KEYS",
    "Check",
    "ConfigReport",
    "MigrationReport",
    "check_config",
    "load_serve_settings",
    "migrate_store",
    "prepare_store",
    "require_store",
]

#: keys `serve` needs named explicitly: their defaults would reach a broker or database on this
#: host that nobody chose (the dev fabric and the test fixtures write their own settings files)
REQUIRED_SERVE_KEYS = ("amqp_url", "database_url", "management_url")


def load_serve_settings(
    config_file: Path | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ForwarderSettings:
    """Settings for `serve`: as `ForwarderSettings.load`, and `ConfigError` naming the first key of
    `REQUIRED_SERVE_KEYS` that none of file, environment or flags sets."""
    settings = ForwarderSettings.load(config_file, overrides=overrides, environ=environ)
    given = _explicit_keys(config_file, overrides or {}, os.environ if environ is None else environ)
    for key in REQUIRED_SERVE_KEYS:
        if key not in given and f"{key}s" not in given:  # amqp_urls names the broker as well
            where = str(config_file) if config_file is not None else "the settings"
            raise ConfigError(
                f"not set in {where}: the forwarder has no default {key} for serving; name it in the settings "
                f"file, as {ENV_PREFIX}{key.upper()} or with --{key.replace('_', '-')}",
                key=key,
            )
    return settings


def _explicit_keys(config_file: Path | None, overrides: Mapping[str, Any], environ: Mapping[str, str]) -> set[str]:
    from_file = load_yaml(config_file) if config_file is not None else {}
    keys = {key for key, value in from_file.items() if value is not None}
    named = (*REQUIRED_SERVE_KEYS, "amqp_urls", "management_urls")
    keys |= {key for key in named if f"{ENV_PREFIX}{key.upper()}" in environ}
    keys |= {key for key, value in overrides.items() if value is not None}
    return keys


# --- the store ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class MigrationReport:
    """What `migrate_store` did: schema `before` (0: an empty database) and `after`."""

    database: str
    before: int
    after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


def migrate_store(settings: ForwarderSettings, *, create: bool = True) -> MigrationReport:
    """Bring the store to this code's schema (creating it in an empty database when `create`).
    A newer store is refused (`StoreTooNew`). Migrations are idempotent (each checks what exists),
    so running this again after an interrupted upgrade completes it; back the store up first."""
    before = Store.status(settings.store_url)
    with Store.open(settings.store_url, create=create, upgrade=True):
        pass
    return MigrationReport(redact_db_url(settings.store_url), before.version, before.latest)


def prepare_store(settings: ForwarderSettings, *, migrate: bool = False) -> SchemaStatus:
    """What `serve` does first: an empty database gets the schema; an older one is refused unless
    `migrate` (then upgraded); a newer one is refused. Returns the status found."""
    before = Store.status(settings.store_url)
    with Store.open(settings.store_url, create=True, upgrade=migrate):
        pass
    return before


def require_store(settings: ForwarderSettings) -> None:
    """`StoreMissing` unless a store exists at the settings' database (nothing is created), and
    the version refusals of `Store.open`."""
    with Store.open(settings.store_url, create=False):
        pass


# --- check-config ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """One reachability check: `ok`, and what was found (or why it failed)."""

    name: str
    ok: bool
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigReport:
    """A valid settings file's summary (no secrets) and, unless offline, its checks."""

    summary: dict[str, Any]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def check_config(
    config_file: Path | None, *, offline: bool = False, environ: Mapping[str, str] | None = None
) -> ConfigReport:
    """Validate the settings as `serve` would (`ConfigError` naming the key) and, unless
    `offline`, check that the store and the broker (AMQP and management API) answer. Changes
    nothing: the store is read, never created or migrated; no queue is declared."""
    settings = load_serve_settings(config_file, environ=environ)
    summary = _summary(settings)
    if offline:
        return ConfigReport(summary, [])
    return ConfigReport(summary, [_check_store(settings), *_check_broker(settings)])


def _summary(settings: ForwarderSettings) -> dict[str, Any]:
    auth = settings.auth
    summary: dict[str, Any] = {
        "listen": f"{'https' if settings.tls.enabled else 'http'}://{settings.host}:{settings.port}",
        "database": redact_db_url(settings.store_url),
        "broker": ", ".join(redact_url(url) for url in settings.broker_urls),
        "vhost": settings.vhost,
        "management": ", ".join(redact_url(url) for url in settings.broker_management_urls),
        "endpoint_broker": ", ".join(settings.endpoint_amqp_urls)
        or settings.endpoint_amqp_url
        or "as amqp_url (each endpoint with its own user)",
        "topology_prefix": settings.topology_prefix,
        "auth": auth.provider,
        "metrics": "token" if settings.metrics_token else "loopback only",
    }
    if auth.provider == "globus":
        summary["globus_client_id"] = auth.globus_client_id
        summary["globus_required_scope"] = auth.globus_required_scope
        summary["globus_audience"] = auth.globus_audience or auth.globus_client_id
        summary["allowed_domains"] = list(auth.allowed_domains)
        summary["allowed_identities"] = list(auth.allowed_identities)
    return summary


def _check_store(settings: ForwarderSettings) -> Check:
    try:
        status = Store.status(settings.store_url)
    except TaskfabricError as exc:
        return Check("store", False, str(exc))
    if status.newer:
        return Check("store", False, f"schema version {status.version} is newer than this taskfabric ({status.latest})")
    if status.older:
        return Check(
            "store",
            False,
            f"schema version {status.version}, needs {status.latest}: run `taskfabric forwarder migrate`",
        )
    if status.empty:
        return Check("store", True, "reachable, empty: `serve` or `forwarder migrate` creates the schema")
    return Check("store", True, f"reachable, schema version {status.version} (current)")


def _check_broker(settings: ForwarderSettings) -> list[Check]:
    from taskfabric.forwarder.broker import AdminBrokerLink  # the broker only when asked

    link = AdminBrokerLink(settings)
    try:
        return [_check_amqp(link, settings), _check_management(link, settings)]
    finally:
        link.close()


def _check_amqp(link: AdminBrokerLink, settings: ForwarderSettings) -> Check:
    try:
        link.transport.start(wait_s=settings.broker_connect_timeout_s)
    except TaskfabricError as exc:
        return Check("broker", False, str(exc))
    return Check("broker", True, f"connected to vhost {settings.vhost!r} as {link.username}")


def _check_management(link: AdminBrokerLink, settings: ForwarderSettings) -> Check:
    """The call the forwarder's queue checks make (its vhost's queues): it needs the same rights."""
    try:
        queues = link.management.queue_states()
    except TaskfabricError as exc:
        return Check("management", False, str(exc))
    return Check("management", True, f"answers ({len(queues)} queues in vhost {settings.vhost!r})")
