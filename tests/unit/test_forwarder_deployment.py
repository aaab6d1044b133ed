"""`serve`'s required keys and the store's version rules (`Store.open`'s create/upgrade), on
SQLite files: no broker, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from taskfabric.errors import ConfigError
from taskfabric.forwarder.deployment import load_serve_settings, migrate_store, require_store
from taskfabric.forwarder.settings import ForwarderSettings
from taskfabric.forwarder.store import Store, StoreMissing, StoreNeedsMigration, StoreTooNew
from taskfabric.forwarder.store.schema import MIGRATIONS

AMQP = "amqp://u:p@broker.example.org:5672/tf"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "forwarder.yaml"
    path.write_text(text)
    return path


def test_serve_needs_amqp_url_and_database_url_from_file_environment_or_flags(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'fw.db'}"
    only_broker = _config(tmp_path, f"amqp_url: {AMQP}\nmanagement_url: http://u:p@broker.example.org:15672\n")
    with pytest.raises(ConfigError, match=r"^database_url: not set in .*forwarder\.yaml") as refused:
        load_serve_settings(only_broker, environ={})
    assert refused.value.key == "database_url"
    with pytest.raises(ConfigError, match=r"^amqp_url: not set in the settings"):
        load_serve_settings(None, overrides={"database_url": database}, environ={})
    with pytest.raises(ConfigError, match=r"^management_url: not set"):
        load_serve_settings(None, overrides={"database_url": database, "amqp_url": AMQP}, environ={})
    from_env = load_serve_settings(only_broker, environ={"TASKFABRIC_FORWARDER_DATABASE_URL": database})
    from_flag = load_serve_settings(only_broker, overrides={"database_url": database}, environ={})
    assert from_env.store_url == from_flag.store_url == database
    # library users keep the defaults: only `serve` insists
    assert ForwarderSettings().amqp_url.startswith("amqp://guest")


def test_store_open_creates_upgrades_and_refuses_by_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(StoreMissing, match="there is no taskfabric store at"):
        Store.open(url, create=False)
    assert not (tmp_path / "store.db").exists()
    with pytest.raises(StoreMissing):
        require_store(ForwarderSettings(database_url=url))
    assert not (tmp_path / "store.db").exists()
    Store.open(url).close()  # an empty database gets the schema
    assert Store.status(url).version == len(MIGRATIONS)
    _set_version(url, 1)
    with pytest.raises(StoreNeedsMigration, match="has schema version 1; this taskfabric needs"):
        Store.open(url)
    report = migrate_store(ForwarderSettings(database_url=url))
    assert (report.before, report.after, report.changed) == (1, len(MIGRATIONS), True)
    _set_version(url, len(MIGRATIONS) + 1)
    for attempt in (lambda: Store.open(url), lambda: Store.open(url, upgrade=True)):
        with pytest.raises(StoreTooNew, match="newer than this taskfabric knows"):
            attempt()


def _set_version(url: str, version: int) -> None:
    with Store.open(url, upgrade=True) as store, store.engine.begin() as connection:
        connection.execute(text("UPDATE schema_version SET version = :v"), {"v": version})
