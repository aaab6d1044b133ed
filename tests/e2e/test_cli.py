"""The command line as users type it: login, the endpoint lifecycle, task lookups, and the
one-command local fabric (`taskfabric dev up | status | down`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from click.testing import CliRunner

from taskfabric.broker_config import ManagementClient
from taskfabric.cli import main
from taskfabric.client import Client, Executor
from taskfabric.exit_codes import RET_BROKER, RET_CONFIG, RET_STOPPED
from taskfabric.testing import wait_until

pytestmark = pytest.mark.slow

Fabric = Any  # the `fabric` fixture of tests/e2e/conftest.py


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def cube(x: int) -> int:
    return x**3


@pytest.mark.parametrize("fabric", ["sqlite"], indirect=True)
def test_login_endpoint_lifecycle_and_task_lookup(fabric: Fabric) -> None:
    login = run("login", "--url", fabric.url, "--token", fabric.token)
    assert login.exit_code == 0, login.output
    assert f"as {fabric.username}" in login.output
    assert fabric.username in run("whoami").output

    name = "clilab"
    configured = run("endpoint", "configure", name, "--workers", "2")
    assert configured.exit_code == 0, configured.output
    config_path = fabric.home / "endpoints" / name / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update({"heartbeat_period_s": 0.5, "heartbeat_threshold_s": 3.0, "status_period_s": 0.5})
    config_path.write_text(yaml.safe_dump(config))
    fabric.endpoints.append(name)

    started = run("endpoint", "start", name, "--detach")
    assert started.exit_code == 0, started.output
    endpoint_id = started.output.split("id ")[1].split()[0]
    listed = run("endpoint", "list", "--json")
    assert any(row["name"] == name and row["state"] == "running" for row in json.loads(listed.output))

    with Client() as client:  # no arguments: the config `login` wrote
        wait_until(lambda: client.get_endpoint_status(endpoint_id)["status"] == "online", what="online")
        with Executor(endpoint_id, client=client) as executor:
            future = executor.submit(cube, 3)
            assert future.result(timeout=60) == 27
    shown = run("task", "result", str(future.task_id))
    assert shown.exit_code == 0 and shown.output.strip() == "27"
    status = run("endpoint", "status", name, "--json")
    assert status.exit_code == 0
    assert json.loads(status.output)["service"]["status"] == "online"

    # a bad edit is refused with the key named, and the running endpoint is left alone
    config_path.write_text(config_path.read_text() + "\nprefetc: 3\n")
    refused = run("endpoint", "restart", name)
    assert refused.exit_code == RET_CONFIG
    assert "prefetc" in refused.output
    config_path.write_text(yaml.safe_dump(config))

    restarted = run("endpoint", "restart", name)
    assert restarted.exit_code == 0, restarted.output
    assert endpoint_id in restarted.output  # the same id across restarts

    stopped = run("endpoint", "stop", name)
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    assert run("endpoint", "status", name).exit_code == RET_STOPPED
    deleted = run("endpoint", "delete", name, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert not config_path.exists()
    with Client() as client:
        assert endpoint_id not in {entry["id"] for entry in client.list_endpoints()}


def test_dev_up_status_and_down(tmp_path: Path) -> None:
    """The README's local fabric, as a subprocess of the real command."""
    env = {**os.environ, "TASKFABRIC_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "taskfabric"]
    try:
        up = subprocess.run(
            [*command, "dev", "up", "--detach", "--workers", "2"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run(
            [*command, "dev", "status", "--json"], check=False, env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert info["forwarder_url"].startswith("http://127.0.0.1:")
        assert info["endpoint_id"]
        script = (
            "from taskfabric.client import Client, Executor\n"
            "import sys\n"
            "with Client() as c, Executor(sys.argv[1], client=c) as ex:\n"
            "    print(sum(ex.map(abs, range(-50, 50))))\n"
        )
        used = subprocess.run(
            [sys.executable, "-c", script, info["endpoint_id"]],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert used.returncode == 0, used.stderr
        assert used.stdout.strip() == str(sum(abs(i) for i in range(-50, 50)))
    finally:
        down = subprocess.run(
            [*command, "dev", "down"], check=False, env=env, capture_output=True, text=True, timeout=180
        )
    assert down.returncode == 0, down.stderr
    after = subprocess.run(
        [*command, "dev", "status", "--json"], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert after.returncode == RET_STOPPED
    assert not any(json.loads(after.stdout)[key] for key in ("broker_running", "forwarder_running", "endpoint_running"))


def test_dev_up_again_after_the_store_file_was_deleted(tmp_path: Path) -> None:
    """The saved token belongs to a store that is gone: `dev up` makes a new one and the
    endpoint registers again under its id."""
    env = {**os.environ, "TASKFABRIC_HOME": str(tmp_path / "home")}

    def dev(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "taskfabric", "dev", *args]
        return subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=180)

    try:
        for attempt in range(2):
            up = dev("up", "--detach", "--workers", "1")
            assert up.returncode == 0, up.stdout + up.stderr
            state = json.loads((tmp_path / "home" / "dev" / "state.json").read_text())
            with (
                Client(url=state["forwarder_url"], token=state["token"]) as client,
                Executor(state["endpoint_id"], client=client) as executor,
            ):
                assert executor.submit(cube, 3).result(timeout=60) == 27
            down = dev("down")
            assert down.returncode == 0, down.stderr
            if attempt == 0:
                for path in (tmp_path / "home" / "dev").glob("forwarder.db*"):
                    path.unlink()
    finally:
        dev("down")


def test_bench_runs_every_scenario_on_its_own_fabric(tmp_path: Path) -> None:
    """`taskfabric bench` at toy sizes: it brings up a local fabric, runs the four scenarios and
    prints one JSON line each with real figures (the full-size run is `make bench`)."""
    env = {**os.environ, "TASKFABRIC_HOME": str(tmp_path / "home")}
    sizes = ["--runs", "1", "--tasks", "300", "--calls", "20", "--backlog", "1000"]
    done = subprocess.run(
        [sys.executable, "-m", "taskfabric", "bench", *sizes],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    records = {
        record["scenario"]: record
        for record in (json.loads(line) for line in done.stdout.splitlines() if line.startswith("{"))
    }
    assert set(records) == {"throughput", "latency", "cold-start", "backlog"}
    assert all(record["cpus"] and record["python"] and record["date"] for record in records.values())
    assert records["throughput"]["parameters"]["size"] == 300
    assert records["throughput"]["median"]["tasks_per_s"] > 0
    latency = records["latency"]["median"]
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    hops = [key for key in latency if key.startswith("hop_")]
    assert len(hops) == 5 and all(latency[key] >= 0 for key in hops)
    assert 0.25 * latency["p50_ms"] < sum(latency[key] for key in hops) < 4 * latency["p50_ms"]  # one clock
    assert records["cold-start"]["median"]["start_to_first_result_s"] > 0
    backlog = records["backlog"]["runs"][0]
    assert (backlog["completed"], backlog["lost"], backlog["failed"]) == (1000, 0, 0)
    assert backlog["forwarder_peak_rss_mb"] > 0 and backlog["agent_peak_rss_mb"] > 0
    assert "taskfabric bench" in done.stdout  # the table's title


def _configure_fast(fabric: Fabric, name: str, **extra: Any) -> Path:
    configured = run("endpoint", "configure", name, "--workers", "2")
    assert configured.exit_code == 0, configured.output
    config_path = fabric.home / "endpoints" / name / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update({"heartbeat_period_s": 0.5, "heartbeat_threshold_s": 3.0, "status_period_s": 0.5, **extra})
    config_path.write_text(yaml.safe_dump(config))
    fabric.endpoints.append(name)
    return config_path


@pytest.mark.parametrize("fabric", ["sqlite"], indirect=True)
def test_start_on_a_running_endpoint_changes_nothing(fabric: Fabric) -> None:
    """Issue 10 item 7.1: `endpoint start` on a running endpoint used to re-register first (new
    broker password), which cut off the running agent."""
    assert run("login", "--url", fabric.url, "--token", fabric.token).exit_code == 0
    name = "twice"
    _configure_fast(fabric, name)
    started = run("endpoint", "start", name, "--detach")
    assert started.exit_code == 0, started.output
    endpoint_id = started.output.split("id ")[1].split()[0]
    connection_file = fabric.home / "endpoints" / name / "connection.json"
    before = connection_file.read_text()

    again = run("endpoint", "start", name, "--detach")
    assert again.exit_code != 0
    assert "already running" in again.output
    assert connection_file.read_text() == before  # not re-registered: the agent's credentials still hold
    with Client() as client, Executor(endpoint_id, client=client) as executor:
        assert executor.submit(cube, 4).result(timeout=60) == 64
    assert run("endpoint", "status", name).exit_code == 0


@pytest.mark.parametrize("fabric", ["sqlite"], indirect=True)
def test_refused_broker_credentials_show_in_status(fabric: Fabric) -> None:
    """Issue 10 item 7.1: an agent whose broker credentials were revoked (the endpoint registered
    again elsewhere) says so in `endpoint status` instead of looping silently; a restart fixes it."""
    from taskfabric.endpoint_agent.local import register_endpoint

    assert run("login", "--url", fabric.url, "--token", fabric.token).exit_code == 0
    name = "rekeyed"
    _configure_fast(fabric, name)
    started = run("endpoint", "start", name, "--detach")
    assert started.exit_code == 0, started.output
    endpoint_id = started.output.split("id ")[1].split()[0]
    with Client() as client:
        fabric.wait_online(client, endpoint_id)
        connection = register_endpoint(name, client)  # new credentials: the running agent's are refused now

    def refused() -> bool:
        # the forwarder closes the old credentials' connections, but the management API lists a
        # fresh connection only after its next stats update: close it here until it is seen
        with ManagementClient(fabric.settings.management_url) as management:
            management.close_connections_of(connection.username, reason="test: credentials replaced")
        shown = run("endpoint", "status", name)
        return shown.exit_code != 0 and "refused" in shown.output

    wait_until(refused, timeout_s=60, what="status to report the refused credentials")
    shown = run("endpoint", "status", name)
    assert shown.exit_code == RET_BROKER
    assert f"taskfabric endpoint restart {name}" in shown.output

    restarted = run("endpoint", "restart", name)
    assert restarted.exit_code == 0, restarted.output
    wait_until(lambda: run("endpoint", "status", name).exit_code == 0, timeout_s=60, what="a healthy agent")


@pytest.mark.parametrize("fabric", ["sqlite"], indirect=True)
def test_endpoint_status_is_a_table_or_one_json_document(fabric: Fabric) -> None:
    """Issue 10 item 7.5 and 7.7: the status shows the display name and the scaling decision the
    agent reports; plain output is a table, `--json` one JSON document."""
    assert run("login", "--url", fabric.url, "--token", fabric.token).exit_code == 0
    name = "shown"
    _configure_fast(fabric, name, display_name="the lab's big box")
    started = run("endpoint", "start", name, "--detach")
    assert started.exit_code == 0, started.output
    endpoint_id = started.output.split("id ")[1].split()[0]

    def reported() -> dict[str, Any] | None:
        shown = run("endpoint", "status", name, "--json")
        info = json.loads(shown.output)
        service = info.get("service") or {}
        return info if service.get("status") == "online" and service.get("scaling") else None

    wait_until(reported, timeout_s=60, what="an online status with a scaling decision")
    info = reported()
    assert info is not None
    assert info["display_name"] == "the lab's big box"
    assert info["service"]["display_name"] == "the lab's big box"
    assert "block" in info["service"]["scaling"]
    with Client() as client:
        remote = client.get_endpoint(endpoint_id)
        assert remote["display_name"] == "the lab's big box" and remote["scaling"]

    table = run("endpoint", "status", name)
    assert table.exit_code == 0
    assert "{" not in table.output and "}" not in table.output  # not a Python dict
    assert "the lab's big box" in table.output
    assert endpoint_id in table.output
    assert "online" in table.output
    listed = run("endpoint", "list")
    assert any(name in line and "the lab's big box" in line for line in listed.output.splitlines())


@pytest.mark.parametrize("fabric", ["sqlite"], indirect=True)
def test_delete_when_the_service_no_longer_knows_the_endpoint(fabric: Fabric) -> None:
    """Issue 10 item 7.9: the service answers 404; without --force the folder stays and the message
    says what to do; with --force it goes."""
    assert run("login", "--url", fabric.url, "--token", fabric.token).exit_code == 0
    name = "orphan"
    config_path = _configure_fast(fabric, name)
    started = run("endpoint", "start", name, "--detach")
    assert started.exit_code == 0, started.output
    endpoint_id = started.output.split("id ")[1].split()[0]
    with Client() as client:
        client.delete_endpoint(endpoint_id)  # deleted on the service (e.g. from another machine)

    kept = run("endpoint", "delete", name, "--yes")
    assert kept.exit_code != 0
    assert "--force" in kept.output
    assert config_path.exists()

    forced = run("endpoint", "delete", name, "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert "deleted the local folder" in forced.output
    assert not config_path.parent.exists()


def test_restart_and_start_with_the_forwarder_down(own_forwarder: Fabric) -> None:
    """Issue 10 item 7.2: `endpoint restart` with the forwarder down stopped the endpoint and could
    not start it again. The agent needs only the broker: the saved registration is used."""
    fabric = own_forwarder
    assert run("login", "--url", fabric.url, "--token", fabric.token).exit_code == 0
    name = "nomad"
    _configure_fast(fabric, name)
    started = run("endpoint", "start", name, "--detach")
    assert started.exit_code == 0, started.output
    endpoint_id = started.output.split("id ")[1].split()[0]
    port = int(fabric.url.rsplit(":", 1)[1])
    fabric.forwarder.stop()

    restarted = run("endpoint", "restart", name)
    assert restarted.exit_code == 0, restarted.output
    assert "could not be reached" in restarted.output  # the warning (on stderr, mixed in by CliRunner)
    assert endpoint_id in restarted.output
    assert run("endpoint", "stop", name).exit_code == 0
    again = run("endpoint", "start", name, "--detach")
    assert again.exit_code == 0, again.output
    assert "could not be reached" in again.output

    fabric.forwarder.settings["port"] = port  # back where the saved client config points
    fabric.forwarder.start()
    with Client() as client:
        fabric.wait_online(client, endpoint_id)
        with Executor(endpoint_id, client=client) as executor:
            assert executor.submit(cube, 5).result(timeout=60) == 125


def test_dev_up_again_keeps_the_live_agent_and_the_forwarder_port(tmp_path: Path) -> None:
    """Issue 10 items 7.1 and 7.3: `dev up` with a live agent re-registered it (new broker password:
    the agent was refused), and a restarted dev forwarder moved to another port when the old one
    lingered in TIME_WAIT (running Executors could not reconnect)."""
    import httpx

    env = {**os.environ, "TASKFABRIC_HOME": str(tmp_path / "home")}

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskfabric", *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    state_file = tmp_path / "home" / "dev" / "state.json"
    pid_file = tmp_path / "home" / "endpoints" / "local" / "agent.pid"
    try:
        up = command("dev", "up", "--detach", "--workers", "1")
        assert up.returncode == 0, up.stdout + up.stderr
        first = json.loads(state_file.read_text())
        agent_pid = pid_file.read_text()
        # a client connection open while the forwarder stops: the forwarder closes it first, so its
        # port lingers in TIME_WAIT
        with httpx.Client(base_url=first["forwarder_url"]) as held:
            assert held.get("/v1/version").status_code == 200
            os.kill(first["forwarder_pid"], signal.SIGTERM)
            wait_until(lambda: not psutil.pid_exists(first["forwarder_pid"]), timeout_s=60, what="the forwarder gone")

        again = command("dev", "up", "--detach", "--workers", "1")
        assert again.returncode == 0, again.stdout + again.stderr
        second = json.loads(state_file.read_text())
        assert second["forwarder_url"] == first["forwarder_url"]
        assert second["endpoint_id"] == first["endpoint_id"]
        assert pid_file.read_text() == agent_pid  # the live agent was kept, not re-keyed
        status = command("endpoint", "status", "local")
        assert status.returncode == 0, status.stdout + status.stderr
        with (
            Client(url=second["forwarder_url"], token=second["token"]) as client,
            Executor(second["endpoint_id"], client=client) as executor,
        ):
            assert executor.submit(cube, 6).result(timeout=60) == 216
        assert command("endpoint", "status", "local").returncode == 0  # and the broker still takes it
    finally:
        down = command("dev", "down")
    assert down.returncode == 0, down.stderr
