"""Multi-user endpoints end to end, as root (CI runs as root): real forwarder, broker, a parent
agent started the way `taskfabric endpoint start` does, user endpoint processes running as two
local accounts this module creates with `useradd` (and removes at the end, even on failure).

One fabric and one parent endpoint for the whole module (SQLite: the store is not the point).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from click.testing import CliRunner

from taskfabric.cli import main
from taskfabric.client import AccountNotAllowed, Executor, IdentityNotMapped, UserConfigInvalid
from taskfabric.endpoint_agent.local import (
    LocalEndpoint,
)
from taskfabric.testing import BrokerUnderTest, wait_until
from taskfabric.testing.accounts import LocalAccounts
from taskfabric.testing.multi_user import MultiUserFabric as MultiUser
from taskfabric.testing.multi_user import multi_user_fabric

pytestmark = pytest.mark.slow

# the tasks run as accounts that cannot import this test module: its functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: the user config template: the user's label reaches the tasks through worker_init
TEMPLATE = """\
heartbeat_period_s: 0.5
heartbeat_threshold_s: 3.0
status_period_s: 0.5
drain_timeout_s: 5
idle_shutdown_s: {{ idle_s | default(30) }}
scaling:
  workers_per_node: 1
  strategy_period_s: 0.5
provider:
  type: LocalProvider
  init_blocks: 1
  min_blocks: 0
  max_blocks: 1
  worker_init: export TF_LABEL={{ label | default("none") }}
"""

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "pattern": "^[a-z0-9 ]{1,20}$"},
        "idle_s": {"type": "number", "minimum": 1, "maximum": 600},
    },
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def accounts() -> Iterator[LocalAccounts]:
    with LocalAccounts(prefix="tfmu", count=2) as made:
        yield made


@pytest.fixture(scope="module")
def multi_user(
    broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory, accounts: LocalAccounts
) -> Iterator[MultiUser]:
    folder = tmp_path_factory.mktemp("fabric-multi-user")
    with multi_user_fabric(broker, folder, accounts, template=TEMPLATE, schema=SCHEMA) as fabric:
        yield fabric


def who_am_i() -> tuple[int, str, str, str]:
    import os
    import pwd

    return os.getuid(), pwd.getpwuid(os.getuid()).pw_name, os.getcwd(), os.environ.get("TF_LABEL", "")


def try_to_read(paths: list[str]) -> list[str]:
    """What happened opening each path: "PermissionError" (refused) or what was read."""
    outcomes = []
    for path in paths:
        try:
            if os.path.isdir(path):
                outcomes.append(repr(os.listdir(path)))
            else:
                with open(path) as handle:
                    outcomes.append(handle.read(20))
        except PermissionError:
            outcomes.append("PermissionError")
    return outcomes


def leave_a_mark(path: str) -> str:
    with open(path, "w") as handle:
        handle.write("ran")
    return path


def test_multi_user_tasks_run_as_the_mapped_accounts(multi_user: MultiUser, accounts: LocalAccounts) -> None:
    seen = {}
    for user, account in zip((multi_user.alice, multi_user.bob), accounts.names, strict=True):
        with multi_user.client(user) as client, Executor(multi_user.endpoint_id, client=client) as executor:
            seen[account] = executor.submit(who_am_i).result(timeout=90)
    for account, (uid, name, cwd, _label) in seen.items():
        entry = pwd.getpwnam(account)
        assert (uid, name) == (entry.pw_uid, account) and uid != 0
        assert cwd.startswith(entry.pw_dir + "/"), cwd
    rows = {row["account"]: row for row in multi_user.user_endpoints()}
    assert set(rows) >= set(accounts.names)
    for account in accounts.names:
        assert rows[account]["state"] == "running" and rows[account]["submits"] >= 1 and rows[account]["started_at"]
        log = Path(rows[account]["folder"]) / "agent.log"  # each user endpoint logs in the account's folder
        assert log.stat().st_uid == pwd.getpwnam(account).pw_uid and "agent for endpoint" in log.read_text()
        process = subprocess.run(
            ["ps", "-o", "user=", "-p", str(rows[account]["pid"])], capture_output=True, text=True, check=False
        )
        assert process.stdout.strip() in (account, str(pwd.getpwnam(account).pw_uid))


def test_multi_user_status_lists_user_endpoints_as_json(multi_user: MultiUser) -> None:
    result = CliRunner().invoke(main, ["endpoint", "status", multi_user.name, "--json"], catch_exceptions=False)
    info = json.loads(result.stdout)
    assert info["service"]["status"] == "online"
    row = next(row for row in info["user_endpoints"] if row["state"] == "running")
    assert {"user", "account", "state", "tasks", "started_at", "pid"} <= set(row)
    assert row["tasks"] == 0 and row["service_status"] == "online"  # what its agent holds now, as it reports
    table = CliRunner().invoke(main, ["endpoint", "status", multi_user.name], catch_exceptions=False)
    assert "account" in table.stdout and multi_user.alice in table.stdout


def test_multi_user_unmapped_user_gets_identity_not_mapped_and_nothing_runs(
    multi_user: MultiUser, tmp_path: Path
) -> None:
    mark = tmp_path / "ran"
    with multi_user.client(multi_user.carol) as client, Executor(multi_user.endpoint_id, client=client) as executor:
        future = executor.submit(leave_a_mark, str(mark))
        with pytest.raises(IdentityNotMapped, match=multi_user.endpoint_id):
            future.result(timeout=60)
    assert not mark.exists()
    refused = [row for row in multi_user.user_endpoints() if row["user"] == multi_user.carol]
    assert [row["state"] for row in refused] == ["refused"]


def test_multi_user_mapping_to_root_is_refused(multi_user: MultiUser, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    with (
        multi_user.client(multi_user.rooty) as client,
        Executor(multi_user.endpoint_id, client=client) as executor,
        pytest.raises(AccountNotAllowed, match="root"),
    ):
        executor.submit(leave_a_mark, str(mark)).result(timeout=60)
    assert not mark.exists()


def test_multi_user_two_configs_start_two_processes_and_the_value_reaches_the_task(
    multi_user: MultiUser, accounts: LocalAccounts
) -> None:
    labels = {}
    for label in ("one", "two"):
        with (
            multi_user.client(multi_user.alice) as client,
            Executor(multi_user.endpoint_id, client=client, user_endpoint_config={"label": label}) as executor,
        ):
            labels[label] = executor.submit(who_am_i).result(timeout=90)
    assert {label: outcome[3] for label, outcome in labels.items()} == {"one": "one", "two": "two"}
    mine = multi_user.user_endpoints(accounts.names[0])
    assert len({row["endpoint_id"] for row in mine}) >= 3  # no config, "one", "two"


def test_multi_user_schema_violation_is_refused_naming_the_field(multi_user: MultiUser) -> None:
    with (
        multi_user.client(multi_user.bob) as client,
        Executor(multi_user.endpoint_id, client=client, user_endpoint_config={"label": "x; rm -rf ~"}) as executor,
        pytest.raises(UserConfigInvalid, match=r"user_endpoint_config\.label"),
    ):
        executor.submit(who_am_i).result(timeout=60)


def test_multi_user_task_cannot_read_parent_credentials_or_another_users_folder(
    multi_user: MultiUser, accounts: LocalAccounts
) -> None:
    parent = LocalEndpoint(multi_user.name).paths.connection
    bob_rows = multi_user.user_endpoints(accounts.names[1])
    assert bob_rows, "bob's user endpoint ran in an earlier test"
    bob_folder = bob_rows[0]["folder"]
    with multi_user.client(multi_user.alice) as client, Executor(multi_user.endpoint_id, client=client) as executor:
        outcomes = executor.submit(try_to_read, [str(parent), bob_folder, f"{bob_folder}/connection.json"]).result(
            timeout=90
        )
    assert outcomes == ["PermissionError"] * 3


def test_multi_user_kill_9_of_a_user_endpoint_loses_no_task(multi_user: MultiUser, accounts: LocalAccounts) -> None:
    with (
        multi_user.client(multi_user.bob) as client,
        Executor(multi_user.endpoint_id, client=client, user_endpoint_config={"label": "crash"}) as executor,
    ):
        first = executor.submit(who_am_i)
        assert first.result(timeout=90)[3] == "crash"
        user_endpoint = client.get_task(str(first.task_id))["endpoint_id"]  # the tasks are listed under it
        [row] = [row for row in multi_user.user_endpoints(accounts.names[1]) if row["endpoint_id"] == user_endpoint]
        assert row["state"] == "running"
        pending = executor.submit(_sleep_then_who, 3.0)
        wait_until(
            lambda: pending.task_id is not None and client.get_task(str(pending.task_id))["status"] == "running",
            timeout_s=60,
            what="the task running",
        )
        os.kill(row["pid"], signal.SIGKILL)
        restarted = wait_until(
            lambda: [
                r
                for r in multi_user.user_endpoints(accounts.names[1])
                if r["endpoint_id"] == row["endpoint_id"] and r["state"] == "running" and r["pid"] != row["pid"]
            ],
            timeout_s=30,
            what="the parent to start the crashed user endpoint again",
        )
        assert restarted[0]["restarts"] >= 1 and restarted[0]["last_exit"] == -signal.SIGKILL
        assert pending.result(timeout=90)[1] == accounts.names[1]  # the task it held ran again
        assert executor.submit(who_am_i).result(timeout=90)[3] == "crash"


def _sleep_then_who(seconds: float) -> tuple[int, str, str, str]:
    import time

    time.sleep(seconds)
    return who_am_i()


def test_multi_user_idle_user_endpoints_stop_and_start_again_with_the_next_task(
    multi_user: MultiUser, accounts: LocalAccounts
) -> None:
    config = {"label": "idle", "idle_s": 2}
    with (
        multi_user.client(multi_user.alice) as client,
        Executor(multi_user.endpoint_id, client=client, user_endpoint_config=config) as executor,
    ):
        first = executor.submit(who_am_i)
        first.result(timeout=90)
        user_endpoint = client.get_task(str(first.task_id))["endpoint_id"]
        stopped = wait_until(
            lambda: [
                row
                for row in multi_user.user_endpoints(accounts.names[0])
                if row["endpoint_id"] == user_endpoint and row["state"] == "stopped" and row["last_exit"] == 0
            ],
            timeout_s=60,
            what="the idle user endpoint to stop",
        )
        assert stopped[0]["pid"] is None
        assert executor.submit(who_am_i).result(timeout=90)[3] == "idle"  # started again for it
    again = [row for row in multi_user.user_endpoints() if row["endpoint_id"] == stopped[0]["endpoint_id"]]
    assert again[0]["restarts"] >= 1


def test_multi_user_stop_stops_every_user_endpoint_and_delete_deletes_them(multi_user: MultiUser) -> None:
    running = [row for row in multi_user.user_endpoints() if row["state"] == "running"]
    assert running
    result = CliRunner().invoke(main, ["endpoint", "stop", multi_user.name], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = multi_user.user_endpoints()
    assert all(row["state"] in ("stopped", "refused", "crashed") for row in rows), rows
    for row in running:
        assert subprocess.run(["kill", "-0", str(row["pid"])], capture_output=True, check=False).returncode != 0
    children = [row["endpoint_id"] for row in rows if row["state"] != "refused"]
    with multi_user.client() as owner:
        owner.delete_endpoint(multi_user.endpoint_id)
        for child in children:
            with pytest.raises(Exception, match=r"404|no endpoint"):
                owner.get_endpoint(child)
