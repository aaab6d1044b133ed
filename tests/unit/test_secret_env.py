"""Which variables the endpoint's processes keep from the tasks they run (taskfabric.secret_env)."""

from __future__ import annotations

import os
import sys

import pytest

from taskfabric.secret_env import exec_without_secrets, scrub_environment, without_secrets

PASSWORD = "s3cr3t-broker-pw"


def test_credential_names_prefixes_and_values_holding_a_known_secret_are_dropped() -> None:
    environ = {
        "TASKFABRIC_TOKEN": "api",
        "TASKFABRIC_MANAGER_TOKEN": "m",
        "TASKFABRIC_FORWARDER_DATABASE_URL": "postgresql://u:p@db/x",
        "TASKFABRIC_TEST_AMQP_URL": "amqp://a:b@h/",
        "MY_URL": f"amqp://ep:{PASSWORD}@host/vh",
        f"NAMED_{PASSWORD}": "1",
        "TASKFABRIC_HOME": "/home/u/.taskfabric",
        "TASKFABRIC_URL": "https://forwarder",
        "HF_TOKEN": "users-own",
        "PATH": "/usr/bin",
    }
    kept = without_secrets(environ, secrets=[PASSWORD, None, ""])
    assert kept == {
        "TASKFABRIC_HOME": "/home/u/.taskfabric",
        "TASKFABRIC_URL": "https://forwarder",
        "HF_TOKEN": "users-own",
        "PATH": "/usr/bin",
    }


def test_short_secrets_are_not_searched_for() -> None:
    environ = {"PATH": "/usr/bin", "HOME": "/home/u"}
    assert without_secrets(environ, secrets=["u", "/"]) == environ


def test_scrub_removes_in_place_and_names_what_it_removed() -> None:
    environ = {"TASKFABRIC_TOKEN": "api", "B": f"x{PASSWORD}", "KEEP": "1"}
    assert scrub_environment(secrets=[PASSWORD], environ=environ) == ["B", "TASKFABRIC_TOKEN"]
    assert environ == {"KEEP": "1"}


def test_exec_without_secrets_only_scrubs_when_not_run_as_the_taskfabric_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFABRIC_TOKEN", "api-token-value")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pytest", "-k", "x"])
    exec_without_secrets()  # would replace pytest itself if it exec'd
    assert "TASKFABRIC_TOKEN" not in os.environ
