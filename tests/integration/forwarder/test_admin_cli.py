"""`taskfabric admin` user and token commands as operators type them, on a real SQLite store:
listings have --json, errors are one line with a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from taskfabric.cli import main


@pytest.fixture
def admin(tmp_path: Path) -> Any:
    config = tmp_path / "forwarder.yaml"
    config.write_text(f"database_url: sqlite:///{tmp_path / 'store' / 'forwarder.db'}\n")
    # as an operator does: the store is made explicitly, admin commands never create one
    created = CliRunner().invoke(main, ["forwarder", "migrate", "--config", str(config)])
    assert created.exit_code == 0, created.output

    def run(*args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(main, ["admin", *args, "--config", str(config)], input=input)

    return run


def test_tokens_are_listed_by_id_prefix_label_and_expiry_and_revoked_by_id(admin: Any) -> None:
    assert admin("create-user", "ada").exit_code == 0
    token = admin("create-token", "ada", "--description", "laptop", "--expires-in", "30d").output.strip()
    listed = admin("list-tokens", "ada", "--json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert set(row) == {"token_id", "prefix", "label", "created_at", "expires_at", "last_used_at"}
    assert row["prefix"] == token[:8] and row["label"] == "laptop" and row["last_used_at"] is None
    assert 29.9 * 86400 < row["expires_at"] - row["created_at"] < 30.1 * 86400
    assert token not in listed.output
    text = admin("list-tokens", "ada")
    assert row["token_id"] in text.output and "laptop" in text.output and token not in text.output
    assert admin("revoke-token", "ada", "--id", row["token_id"]).output.strip() == "revoked 1 token(s) of ada"
    assert json.loads(admin("list-tokens", "ada", "--json").output) == []


def test_disable_enable_and_delete_show_in_list_users(admin: Any) -> None:
    admin("create-user", "bob")
    assert admin("disable-user", "bob").output.startswith("disabled bob: 0 endpoint(s) cut off, 0 task(s) failed")
    (user,) = json.loads(admin("list-users", "--json").output)
    assert user["username"] == "bob" and user["disabled_at"] is not None
    assert "disabled" in admin("list-users").output
    admin("enable-user", "bob")
    assert json.loads(admin("list-users", "--json").output)[0]["disabled_at"] is None
    assert admin("delete-user", "bob").exit_code == 0
    assert json.loads(admin("list-users", "--json").output) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-token", "ada", "--expires-in", "soon"), "'soon' is not a duration"),
        (("create-token", "nobody"), "no local user named 'nobody'"),
        (("disable-user", "nobody"), "no local user named 'nobody'"),
        (("delete-user", "nobody", "--auth", "globus"), "no globus user named 'nobody'"),
        (("list-tokens", "nobody", "--json"), "no local user named 'nobody'"),
        (("revoke-token", "ada", "--id", "0" * 32), "not one of 'ada'"),
    ],
)
def test_mistakes_are_one_line_errors_with_a_non_zero_exit(admin: Any, args: tuple[str, ...], message: str) -> None:
    admin("create-user", "ada")
    result = admin(*args)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
