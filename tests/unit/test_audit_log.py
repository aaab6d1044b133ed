"""The audit log's file: one JSON object per line with the fixed keys, private, appendable by two
writers, and a clear error when it cannot be opened."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from taskfabric.errors import ConfigError
from taskfabric.forwarder.audit import LOCAL_PEER, AuditLog


def test_records_are_json_lines_with_fixed_keys_appended_by_two_writers(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    with AuditLog(path, clock=lambda: 12.5) as forwarder, AuditLog(path, clock=lambda: 13.0) as admin:
        forwarder.record("login", user="ada", peer="10.0.0.7:5123")
        admin.record("revoke_token", user="admin:root", peer=LOCAL_PEER, object="user:ada token:all")
        forwarder.record("login_refused", user="", peer="10.0.0.8:1", outcome="INVALID_TOKEN")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [record["action"] for record in records] == ["login", "revoke_token", "login_refused"]
    assert records[0] == {
        "time": 12.5,
        "user": "ada",
        "peer": "10.0.0.7:5123",
        "action": "login",
        "object": "",
        "outcome": "ok",
    }
    assert records[2]["outcome"] == "INVALID_TOKEN"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_an_unopenable_audit_log_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="audit_log_file: cannot open the audit log"):
        AuditLog(blocker / "audit.jsonl")


def test_records_after_close_are_dropped_not_raised(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl")
    audit.close()
    audit.record("login", user="ada", peer="p")
    assert (tmp_path / "a.jsonl").read_text() == ""
