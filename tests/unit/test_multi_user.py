"""Multi-user endpoints, the domain logic without processes: identity mapping rules and programs,
account checks, the user config template and schema, the privilege check, submit-request parsing
and the forwarder's naming of user endpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.multi_user import privilege
from taskfabric.endpoint_agent.multi_user.children import UserEndpointProcess, UserEndpoints, read_user_endpoints
from taskfabric.endpoint_agent.multi_user.mapping import IdentityMapping, MappingRefused, UserIdentity
from taskfabric.endpoint_agent.multi_user.privilege import LocalAccount, create_account_folder, require_privilege
from taskfabric.endpoint_agent.multi_user.user_config import UserConfigRefused, UserConfigTemplate
from taskfabric.errors import ConfigError, ErrorCode, InvalidRequest
from taskfabric.forwarder.records import EndpointRecord, Identity
from taskfabric.forwarder.requests import SubmitLimits, parse_submit_json
from taskfabric.forwarder.user_endpoints import (
    UserEndpointKey,
    config_digest,
    is_multi_user,
    parent_of,
    user_endpoint_id,
    user_endpoint_metadata,
)

EXISTING = pwd.getpwuid(os.getuid()).pw_name  # root in CI
NOBODY = "nobody"


def identity(username: str, **extra: str) -> UserIdentity:
    return UserIdentity(username=username, user_id=str(uuid.uuid4()), **extra)


def mapping(rules: list[dict[str, str]], deny: list[str] | None = None) -> IdentityMapping:
    return IdentityMapping.from_config({"rules": rules}, deny_accounts=deny or [])


# --- identity mapping ---------------------------------------------------------------------


def test_multi_user_the_first_matching_rule_wins_and_groups_fill_the_output() -> None:
    rules = mapping(
        [
            {"match": r"(?P<local>[a-z]+)@uni\.example", "output": "{local}", "source": "identity_username"},
            {"match": r"ops-(.*)", "output": "{0}"},
            {"match": r"nob.dy", "output": "{0}"},
            {"match": r".*", "output": "never"},
        ]
    )
    assert rules._map(identity("x", identity_username="nobody@uni.example")) == NOBODY
    assert rules._map(identity("ops-nobody")) == NOBODY
    assert rules._map(identity("nobody")) == NOBODY  # no group: {0} is the whole match
    assert rules.account_for(identity("nobody")).pw_name == NOBODY


def test_multi_user_match_is_a_full_match_and_unmapped_users_are_refused() -> None:
    rules = mapping([{"match": "alice", "output": NOBODY}])
    assert rules._map(identity("alice2")) is None
    with pytest.raises(MappingRefused) as refused:
        rules.account_for(identity("malice"))
    assert refused.value.code is ErrorCode.IDENTITY_NOT_MAPPED
    assert "malice" in refused.value.message


@pytest.mark.parametrize(
    ("target", "deny", "why"),
    [
        ("root", [], "never run as"),
        (NOBODY, [NOBODY], "never run as"),
        ("no-such-account-xyz", [], "does not exist"),
        ("Bad Name", [], "not an account name"),
    ],
)
def test_multi_user_root_denied_missing_and_malformed_accounts_are_not_allowed(
    target: str, deny: list[str], why: str
) -> None:
    rules = mapping([{"match": "u", "output": target}], deny)
    with pytest.raises(MappingRefused, match=why) as refused:
        rules.account_for(identity("u"))
    assert refused.value.code is ErrorCode.ACCOUNT_NOT_ALLOWED


def test_multi_user_an_account_with_uid_0_under_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pwd.getpwnam("root")
    monkeypatch.setattr(pwd, "getpwnam", lambda name: real if name == "toor" else pwd.getpwnam(name))
    with pytest.raises(MappingRefused, match="uid 0"):
        mapping([{"match": "u", "output": "toor"}]).account_for(identity("u"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "needs `rules` or `program`"),
        ({"rules": []}, "non-empty list"),
        ({"rules": [{"match": "(", "output": "x"}]}, r"rules\[0\]\.match: not a regular expression"),
        ({"rules": [{"match": "a", "output": "{1}"}]}, r"rules\[0\]\.output"),
        ({"rules": [{"match": "a", "output": "x", "source": "email"}]}, r"rules\[0\]\.source"),
        ({"rules": [{"match": "a", "output": "x", "extra": 1}]}, "unknown key 'extra'"),
        ({"rules": [{"match": "a", "output": "x"}], "program": "x"}, "exactly one"),
        ({"program": []}, "program: expected a command"),
    ],
)
def test_multi_user_bad_mapping_configs_name_the_key(config: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdentityMapping.from_config(config, deny_accounts=[])  # type: ignore[arg-type]


def test_multi_user_config_yaml_validates_the_mapping_eagerly() -> None:
    with pytest.raises(ConfigError, match="identity_mapping"):
        EndpointConfig.from_mapping({"multi_user": True})
    config = EndpointConfig.from_mapping(
        {"multi_user": True, "identity_mapping": {"rules": [{"match": "a", "output": "b"}]}}
    )
    assert config.deny_accounts == ["root"]


def test_multi_user_a_mapping_program_reads_the_identity_on_stdin(tmp_path: Path) -> None:
    script = tmp_path / "map.py"
    script.write_text(
        "import json, sys\n"
        "who = json.load(sys.stdin)\n"
        "if who['identity_username'] == 'n@uni':\n"
        "    print('nobody')\n"
        "else:\n"
        "    sys.exit(1)\n"
    )
    program = IdentityMapping.from_config({"program": [sys.executable, str(script)]}, deny_accounts=[])
    assert program.account_for(identity("x", identity_username="n@uni")).pw_name == NOBODY
    with pytest.raises(MappingRefused) as refused:
        program.account_for(identity("x", identity_username="other"))
    assert refused.value.code is ErrorCode.IDENTITY_NOT_MAPPED


# --- user config template and schema ---------------------------------------------------------

TEMPLATE = """\
idle_shutdown_s: {{ idle_s | default(60) }}
provider:
  type: LocalProvider
  max_blocks: 1
  worker_init: export PROJECT={{ account }}
"""
SCHEMA = {
    "type": "object",
    "properties": {"account": {"type": "string", "maxLength": 40}, "idle_s": {"type": "number", "minimum": 1}},
    "required": ["account"],
    "additionalProperties": False,
}


def template(folder: Path, text: str = TEMPLATE, schema: object = SCHEMA) -> UserConfigTemplate:
    (folder / "user_config_template.yaml.j2").write_text(text)
    schema_file = folder / "user_config_schema.json"
    schema_file.unlink(missing_ok=True)
    if schema is not None:
        schema_file.write_text(json.dumps(schema))
    return UserConfigTemplate.from_folder(folder)


def test_multi_user_template_renders_the_users_values(tmp_path: Path) -> None:
    rendered = template(tmp_path).render({"account": "proj42", "idle_s": 5})
    assert rendered["idle_shutdown_s"] == 5
    assert rendered["provider"]["worker_init"] == "export PROJECT=proj42"
    EndpointConfig.from_mapping(rendered)


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({}, "user_endpoint_config.account"),
        ({"account": 3}, "user_endpoint_config.account"),
        ({"account": "x" * 41}, "user_endpoint_config.account"),
        ({"account": "a", "idle_s": 0}, "user_endpoint_config.idle_s"),
        ({"account": "a", "shell": "x"}, "user_endpoint_config.shell"),
        ({"account": "a\nmulti_user: true"}, "user_endpoint_config.account"),
    ],
)
def test_multi_user_schema_violations_name_the_field(tmp_path: Path, variables: dict[str, object], field: str) -> None:
    with pytest.raises(UserConfigRefused) as refused:
        template(tmp_path).render(variables)
    assert refused.value.field == field
    assert str(refused.value).startswith(field)


def test_multi_user_values_are_shell_quoted_and_never_become_code(tmp_path: Path) -> None:
    rendered = template(tmp_path, schema=None).render({"account": "p; touch /tmp/pwned $(id)"})
    assert rendered["provider"]["worker_init"] == "export PROJECT='p; touch /tmp/pwned $(id)'"


def test_multi_user_the_template_is_sandboxed_and_strict(tmp_path: Path) -> None:
    escape = template(tmp_path, "x: {{ ''.__class__.__mro__[1].__subclasses__() }}\n", schema=None)
    with pytest.raises(UserConfigRefused, match="template failed"):
        escape.render({})
    strict = template(tmp_path, "provider: {type: LocalProvider}\nidle_shutdown_s: {{ missing }}\n", schema=None)
    with pytest.raises(UserConfigRefused, match="missing"):
        strict.render({})


def test_multi_user_a_rendered_config_cannot_be_multi_user(tmp_path: Path) -> None:
    with pytest.raises(UserConfigRefused) as refused:
        template(tmp_path, "multi_user: true\n", schema=None).render({})
    assert refused.value.field == "multi_user"


def test_multi_user_a_broken_schema_or_template_is_the_administrators_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        template(tmp_path, schema={"type": "no-such-type"})
    with pytest.raises(Exception, match="unexpected"):
        template(tmp_path, "x: {{ a }\n", schema=None)


# --- privilege ------------------------------------------------------------------------------


def test_multi_user_a_parent_without_privilege_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(privilege, "_has_setuid_capabilities", lambda: False)
    with pytest.raises(PermissionError, match="must be started by root"):
        require_privilege()


def test_multi_user_account_folders_never_follow_planted_links(tmp_path: Path) -> None:
    account = LocalAccount.of(pwd.getpwuid(os.getuid()))
    made = create_account_folder(tmp_path, ["a", "b"], account)
    assert made.is_dir() and oct(made.stat().st_mode & 0o777) == "0o700"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "a" / "link").symlink_to(elsewhere)
    with pytest.raises(OSError):
        create_account_folder(tmp_path, ["a", "link", "c"], account)
    assert not (elsewhere / "c").exists()
    with pytest.raises(ValueError, match="plain folder name"):
        create_account_folder(tmp_path, ["..", "x"], account)


def test_multi_user_the_environment_is_built_from_nothing() -> None:
    account = LocalAccount.of(pwd.getpwnam(NOBODY))
    assert set(account.environment()) == {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG"}
    assert account.environment()["USER"] == NOBODY


# --- forwarder: requests and naming ---------------------------------------------------------

LIMITS = SubmitLimits(max_tasks=10, max_payload_bytes=1024)


def submit_body(**extra: object) -> bytes:
    task = {"function_id": str(uuid.uuid4()), "payload": ""}
    return json.dumps({"tasks": [task], **extra}).encode()


def test_multi_user_submit_requests_carry_a_bounded_json_object() -> None:
    assert parse_submit_json(submit_body(), LIMITS).user_endpoint_config is None
    parsed = parse_submit_json(submit_body(user_endpoint_config={"account": "p", "n": [1, 2]}), LIMITS)
    assert parsed.user_endpoint_config == {"account": "p", "n": [1, 2]}
    with pytest.raises(InvalidRequest, match="user_endpoint_config"):
        parse_submit_json(submit_body(user_endpoint_config=["not", "a", "map"]), LIMITS)
    with pytest.raises(Exception, match="user_endpoint_config"):
        parse_submit_json(submit_body(user_endpoint_config={"x": "y" * 20_000}), LIMITS)
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(500):  # small (a few KiB) but deep enough to exhaust the endpoint's recursion
        inner["x"] = inner = {}
    with pytest.raises(InvalidRequest, match="user_endpoint_config: nested more than"):
        parse_submit_json(submit_body(user_endpoint_config=deep), LIMITS)
    nested_ok = {"a": {"b": [{"c": [1, 2]}]}}
    assert parse_submit_json(submit_body(user_endpoint_config=nested_ok), LIMITS).user_endpoint_config == nested_ok


def test_multi_user_one_user_endpoint_per_parent_user_and_config() -> None:
    parent = uuid.uuid4()
    alice = Identity(user_id=uuid.uuid4(), username="alice", auth="local")
    bob = Identity(user_id=uuid.uuid4(), username="bob", auth="local")

    def child(who: Identity, config: dict[str, object] | None) -> uuid.UUID:
        return user_endpoint_id(UserEndpointKey(parent, who, config))

    assert child(alice, {"a": 1, "b": 2}) == child(alice, {"b": 2, "a": 1})
    assert child(alice, None) == child(alice, {})
    assert len({child(alice, None), child(alice, {"a": 1}), child(bob, None)}) == 3
    assert config_digest({"a": 1}) != config_digest({"a": 2})
    record = EndpointRecord(
        endpoint_id=child(alice, None),
        owner_id=uuid.uuid4(),
        name="n",
        queue_secret="s",
        broker_username="u",
        created_at=0.0,
        metadata=user_endpoint_metadata(UserEndpointKey(parent, alice, None)),
    )
    assert parent_of(record) == parent and not is_multi_user(record)
    assert is_multi_user(dataclasses.replace(record, metadata='{"multi_user": true}'))


# --- the parent's table of user endpoint processes ----------------------------------------


def test_multi_user_a_restarted_parent_takes_over_the_processes_still_running(tmp_path: Path) -> None:
    account = LocalAccount.of(pwd.getpwuid(os.getuid()))
    folder = tmp_path / "child"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (folder / "agent.pid").write_text(str(sleeper.pid))
        first = UserEndpoints(tmp_path / "user_endpoints.json", [sys.executable])
        entry = UserEndpointProcess(
            endpoint_id=uuid.uuid4(), user="alice", account=account, folder=folder, config_digest="d"
        )
        assert first.adopt(entry) and entry.alive
        again = UserEndpoints(tmp_path / "user_endpoints.json", [sys.executable])  # the parent restarted
        assert again.recover() == 1
        [row] = read_user_endpoints(tmp_path)
        assert (row["state"], row["pid"], row["account"]) == ("running", sleeper.pid, account.name)
        again.stop_all(timeout_s=5)
        assert sleeper.wait(timeout=5) == -signal.SIGTERM
        assert read_user_endpoints(tmp_path)[0]["state"] == "stopped"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_multi_user_a_crashed_process_is_restarted_within_its_budget() -> None:
    account = LocalAccount.of(pwd.getpwuid(os.getuid()))
    entry = UserEndpointProcess(
        endpoint_id=uuid.uuid4(), user="a", account=account, folder=Path("/nonexistent"), config_digest=""
    )
    assert [entry.may_restart_after_crash(100.0 + i) for i in range(4)] == [True, True, True, False]
    assert entry.may_restart_after_crash(100.0 + 400)  # the window moved on


def test_multi_user_an_idle_stop_that_raced_a_new_task_is_started_again() -> None:
    account = LocalAccount.of(pwd.getpwuid(os.getuid()))
    entry = UserEndpointProcess(
        endpoint_id=uuid.uuid4(), user="a", account=account, folder=Path("/nonexistent"), config_digest=""
    )
    entry.started_at, entry.idle_shutdown_s = 100.0, 30.0
    entry.last_command_at = 99.0  # the command that started it
    assert not entry.missed_a_command(exited_at=200.0)
    entry.last_command_at = 120.0  # a task came, was served, then 30 s idle
    assert not entry.missed_a_command(exited_at=200.0)
    entry.last_command_at = 185.0  # a task came while it was deciding to stop
    assert entry.missed_a_command(exited_at=200.0)


def test_multi_user_endpoint_start_refuses_an_unprivileged_parent_with_a_clear_message(
    tmp_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskfabric.endpoint_agent.local import configure_endpoint, start_endpoint
    from taskfabric.errors import TaskfabricError

    configure_endpoint(
        "shared",
        settings={"multi_user": True, "identity_mapping": {"rules": [{"match": "a", "output": "b"}]}},
    )
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(privilege, "_has_setuid_capabilities", lambda: False)
    with pytest.raises(TaskfabricError, match="must be started by root"):
        start_endpoint("shared", detach=True)


@pytest.mark.parametrize("line_break", ["\x85", "\u2028", "\u2029"])
def test_multi_user_unicode_line_breaks_cannot_add_keys_through_a_block_scalar(tmp_path: Path, line_break: str) -> None:
    block = template(
        tmp_path, "provider:\n  type: LocalProvider\n  worker_init: |\n    module load {{ m }}\n", schema=None
    )
    with pytest.raises(UserConfigRefused) as refused:
        block.render({"m": f"x{line_break}idle_shutdown_s: 99999 #"})
    assert refused.value.field == "user_endpoint_config.m"


def test_multi_user_a_planted_fifo_as_agent_pid_does_not_block_the_parent(tmp_path: Path) -> None:
    account = LocalAccount.of(pwd.getpwuid(os.getuid()))
    folder = tmp_path / "child"
    folder.mkdir()
    os.mkfifo(folder / "agent.pid")  # the account owns its folder: it can put anything there
    table = UserEndpoints(tmp_path / "user_endpoints.json", [sys.executable])
    entry = UserEndpointProcess(
        endpoint_id=uuid.uuid4(), user="mallory", account=account, folder=folder, config_digest="d"
    )
    answer: list[bool] = []
    reader = threading.Thread(target=lambda: answer.append(table.adopt(entry)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    blocked = reader.is_alive()
    if blocked:  # unblock the reader before failing
        os.close(os.open(folder / "agent.pid", os.O_WRONLY))
        reader.join(timeout=5)
    assert not blocked and answer == [False]


def test_multi_user_a_planted_hard_link_or_fifo_as_process_log_is_refused(tmp_path: Path) -> None:
    nobody = LocalAccount.of(pwd.getpwnam(NOBODY))
    folder = tmp_path / "child"
    folder.mkdir()
    os.chown(folder, nobody.uid, nobody.gid)  # the account's folder
    log_file = folder / "process.log"
    precious = tmp_path / "precious"
    precious.write_text("root's")
    os.link(precious, log_file)  # what an account could plant in its folder
    with pytest.raises(PermissionError, match="not a plain file"):
        privilege.start_as(nobody, ["true"], cwd=tmp_path, log_file=log_file)
    assert precious.stat().st_uid == os.getuid() and precious.read_text() == "root's"
    os.unlink(log_file)
    os.mkfifo(log_file)
    with pytest.raises(PermissionError, match="not a file the parent writes to"):
        privilege.start_as(nobody, ["true"], cwd=tmp_path, log_file=log_file)


def test_multi_user_root_never_writes_through_a_link_swapped_into_the_folders_path(tmp_path: Path) -> None:
    nobody = LocalAccount.of(pwd.getpwnam(NOBODY))
    victim = tmp_path / "victim" / "child"  # someone else's (root's) folder
    victim.mkdir(parents=True)
    (tmp_path / "mine").symlink_to(tmp_path / "victim")  # an account swaps its folder for a link
    with pytest.raises(PermissionError, match="not a folder of nobody"):
        privilege.write_account_file(tmp_path / "mine" / "child", "config.yaml", "planted", nobody)
    with pytest.raises(PermissionError, match="not a folder of nobody"):
        privilege.start_as(nobody, ["true"], cwd=tmp_path, log_file=tmp_path / "mine" / "child" / "process.log")
    assert list(victim.iterdir()) == []
    own = tmp_path / "own"
    own.mkdir()
    os.chown(own, nobody.uid, nobody.gid)
    written = privilege.write_account_file(own, "config.yaml", "mine", nobody)
    assert written.read_text() == "mine" and written.stat().st_uid == nobody.uid


def test_multi_user_system_accounts_below_min_uid_are_refused() -> None:
    system = pwd.getpwnam("daemon")  # uid 1 on Debian
    rules = [{"match": "(.*)", "output": "{0}"}]  # a pass-through rule: any username is an account name
    with pytest.raises(MappingRefused) as refused:
        IdentityMapping.from_config({"rules": rules}, deny_accounts=[], min_uid=1000).account_for(identity("daemon"))
    assert refused.value.code == ErrorCode.ACCOUNT_NOT_ALLOWED and "min_uid" in refused.value.message
    assert EndpointConfig.from_mapping({}).min_uid == 1000  # the default keeps system accounts out
    allowed = IdentityMapping.from_config({"rules": rules}, deny_accounts=[], min_uid=1)
    assert allowed.account_for(identity("daemon")).pw_uid == system.pw_uid
