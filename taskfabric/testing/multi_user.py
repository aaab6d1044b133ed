"""A multi-user endpoint under test (root only): a forwarder subprocess, local accounts, a parent
endpoint started the way `taskfabric endpoint start` does with a mapping rule per account, and
taskfabric users: `alice` and `bob` (mapped to the two accounts), `carol` (no rule) and `rooty`
(mapped to root). Used by the end-to-end and the Slurm tests (one per module)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskfabric.client import Client
from taskfabric.client.config import ClientConfig
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
    configure_endpoint,
    endpoint_status,
    register_endpoint,
    start_endpoint,
    stop_endpoint,
)
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.testing import ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until
from taskfabric.testing.accounts import LocalAccounts, readable_python

__all__ = ["MultiUserFabric", "multi_user_fabric"]

FORWARDER_SETTINGS: dict[str, Any] = {
    "status_period_s": 0.5,
    "endpoint_offline_after_s": 3.0,
    "status_flush_s": 0.2,
    "confirm_timeout_s": 10.0,
}


class MultiUserFabric:
    """A forwarder, a parent endpoint, the accounts and the taskfabric users."""

    def __init__(self, forwarder: ForwarderProcess, settings: ForwarderSettings, accounts: LocalAccounts) -> None:
        self.forwarder = forwarder
        self.settings = settings
        self.accounts = accounts
        self.owner = unique_name("admin")
        create_user(settings, self.owner)
        self.owner_token = create_token(settings, self.owner)
        self.tokens: dict[str, str] = {}
        self.name = unique_name("mu")
        self.endpoint_id = ""
        self.alice, self.bob = self.user("alice"), self.user("bob")
        self.carol = self.user("carol")  # no mapping rule
        self.rooty = self.user("rooty")  # mapped to root

    def user(self, stem: str) -> str:
        name = unique_name(stem)
        create_user(self.settings, name)
        self.tokens[name] = create_token(self.settings, name)
        return name

    def rules(self) -> list[dict[str, str]]:
        account_a, account_b = self.accounts.names[:2]
        return [
            {"match": re.escape(self.alice), "output": account_a},
            {"match": re.escape(self.bob), "output": account_b},
            {"source": "username", "match": re.escape(self.rooty), "output": "root"},
        ]

    def client(self, user: str | None = None) -> Client:
        return Client(url=self.forwarder.url, token=self.tokens[user] if user else self.owner_token)

    def status(self) -> dict[str, Any]:
        return endpoint_status(self.name, self.client)

    def user_endpoints(self, account: str | None = None) -> list[dict[str, Any]]:
        rows = self.status().get("user_endpoints") or []
        return [row for row in rows if account is None or row.get("account") == account]


@contextlib.contextmanager
def multi_user_fabric(
    broker: BrokerUnderTest,
    folder: Path,
    accounts: LocalAccounts,
    *,
    template: str,
    schema: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Iterator[MultiUserFabric]:
    """Start the fabric in `folder` (TASKFABRIC_HOME is set to `folder/home` meanwhile) with the
    parent online; stop the parent at the end. `settings` adds to the parent's config.yaml."""
    if os.geteuid() != 0:
        raise PermissionError("multi-user endpoints are tested as root (CI runs as root)")
    assert broker.management_url
    values = {
        **FORWARDER_SETTINGS,
        "database_url": f"sqlite:///{folder / 'fw.db'}",
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("mu"),
    }
    previous_home = os.environ.get("TASKFABRIC_HOME")
    os.environ["TASKFABRIC_HOME"] = str(folder / "home")
    try:
        forwarder_settings = ForwarderSettings.from_mapping(values)
        with ForwarderProcess(folder / "forwarder", values) as forwarder:
            fabric = MultiUserFabric(forwarder, forwarder_settings, accounts)
            ClientConfig(url=forwarder.url, token=fabric.owner_token).save()  # the CLI is the administrator
            python = readable_python(accounts)
            configure_endpoint(
                fabric.name,
                settings={
                    "multi_user": True,
                    "identity_mapping": {"rules": fabric.rules()},
                    "idle_shutdown_s": 30,
                    "status_period_s": 0.5,
                    "drain_timeout_s": 5,
                    **({"user_endpoint_python": python} if python else {}),
                    **(settings or {}),
                },
            )
            root = LocalEndpoint(fabric.name).paths.root
            (root / "user_config_template.yaml.j2").write_text(template)
            if schema is not None:
                (root / "user_config_schema.json").write_text(json.dumps(schema))
            try:
                _start_parent(fabric)
                yield fabric
            finally:
                if LocalEndpoint(fabric.name).pid() is not None:
                    stop_endpoint(fabric.name, timeout_s=30)
    finally:
        if previous_home is None:
            os.environ.pop("TASKFABRIC_HOME", None)
        else:
            os.environ["TASKFABRIC_HOME"] = previous_home


def _start_parent(fabric: MultiUserFabric) -> None:
    with fabric.client() as owner:
        connection = register_endpoint(fabric.name, owner)
        fabric.endpoint_id = str(connection.endpoint_id)
        owner.set_endpoint_public(fabric.endpoint_id, True)  # sharing: who may submit
        start_endpoint(fabric.name, detach=True)
        wait_until(
            lambda: owner.get_endpoint_status(fabric.endpoint_id)["status"] == "online",
            timeout_s=30,
            what="the parent online",
        )
