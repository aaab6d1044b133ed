"""The unmodified Globus Compute SDK against taskfabric (issue 17; docs/globus-compute.md).

One fabric for the module: `taskfabric dev up --globus-compute` (its forwarder serves the compatible
API on 127.0.0.1:5000, where the SDK's `local` environment looks). The SDK runs from its own virtual
environment (`globus-compute-sdk==4.19.0` only, made once per session from pip's cache), with the
variables `taskfabric globus-compute env` prints, and runs tests/e2e/globus_compute_script.py:
every scenario against dev up, then a short pass through `taskfabric globus-compute proxy` in front
of a forwarder on another port (the same store, broker and endpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskfabric.processes import free_port, terminate_then_kill
from taskfabric.testing import wait_until

pytestmark = pytest.mark.slow

SDK_REQUIREMENT = "globus-compute-sdk==4.19.0"
SCRIPT = Path(__file__).with_name("globus_compute_script.py")
TASKFABRIC = [sys.executable, "-m", "taskfabric"]
COMPUTE_PORT = 5000


@pytest.fixture(scope="session")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a virtual environment holding the real SDK and not taskfabric."""
    venv = tmp_path_factory.mktemp("globus-compute-sdk") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK_REQUIREMENT],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import globus_compute_sdk, importlib.util as u; print(globus_compute_sdk.__version__,"
            " u.find_spec('taskfabric') is None)",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=venv,  # not the repository, whose taskfabric/ folder would be importable from there
    )
    assert probe.stdout.split() == ["4.19.0", "True"], probe.stdout
    return python


def _cli(env: dict[str, str], *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TASKFABRIC, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def compute_fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`taskfabric dev up --globus-compute` in a home of its own; down at the end."""
    home = tmp_path_factory.mktemp("gc-home")
    env = {**os.environ, "TASKFABRIC_HOME": str(home)}
    started: list[subprocess.Popen[bytes]] = []
    try:
        up = _cli(env, "dev", "up", "--detach", "--globus-compute", "--workers", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(_cli(env, "dev", "status", "--json").stdout)
        assert status["forwarder_url"] == f"http://127.0.0.1:{COMPUTE_PORT}"
        yield {"home": home, "env": env, "endpoint_id": status["endpoint_id"], "started": started}
    finally:
        _cli(env, "dev", "down")  # first: the endpoint stops quickest while a forwarder still serves
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _sdk_env(fabric: dict[str, Any], user_dir: Path) -> dict[str, str]:
    shown = _cli(fabric["env"], "globus-compute", "env", "--json")
    assert shown.returncode == 0, shown.stderr
    variables = json.loads(shown.stdout)
    assert variables["GLOBUS_SDK_ENVIRONMENT"] == "local"
    lines = _cli(fabric["env"], "globus-compute", "env").stdout
    assert f"export GLOBUS_COMPUTE_CLIENT_ID={variables['GLOBUS_COMPUTE_CLIENT_ID']}" in lines
    return {
        **fabric["env"],
        **variables,
        "GLOBUS_COMPUTE_USER_DIR": str(user_dir),  # the SDK's token storage
        "TF_CLI": json.dumps(TASKFABRIC),
    }


def _run_script(python: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(python), str(SCRIPT), *args], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_dev_up_globus_compute_names_the_taken_port(compute_fabric: dict[str, Any], tmp_path: Path) -> None:
    """Port 5000 is the module fabric's: a second dev up --globus-compute says so, starts nothing."""
    env = {**os.environ, "TASKFABRIC_HOME": str(tmp_path / "home")}
    refused = _cli(env, "dev", "up", "--detach", "--globus-compute")
    assert refused.returncode != 0
    assert f"port {COMPUTE_PORT}" in refused.stdout + refused.stderr
    assert not (tmp_path / "home" / "dev" / "broker").exists()  # refused before starting a broker


def test_unmodified_sdk_script_against_dev_up(compute_fabric: dict[str, Any], sdk_python: Path, tmp_path: Path) -> None:
    env = _sdk_env(compute_fabric, tmp_path / "sdk")
    output = _run_script(sdk_python, env, "full", compute_fabric["endpoint_id"])
    for step in ("status", "executor 500", "exception", "run", "batch", "offline", "reload"):
        assert f"ok {step}\n" in output, output


def test_unmodified_sdk_through_the_proxy(compute_fabric: dict[str, Any], sdk_python: Path, tmp_path: Path) -> None:
    """The dev forwarder gives way to one on another port (same store, broker and endpoint), and
    `taskfabric globus-compute proxy` serves localhost:5000 in front of it."""
    env, home = compute_fabric["env"], compute_fabric["home"]
    state = json.loads((home / "dev" / "state.json").read_text())
    terminate_then_kill(state["forwarder_pid"], 30)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (home / "forwarder-2.log").open("wb") as log:
        forwarder = subprocess.Popen(
            [*TASKFABRIC, "forwarder", "serve", "--config", str(home / "dev" / "forwarder.yaml"), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    compute_fabric["started"].append(forwarder)
    wait_until(lambda: _answers(f"{url}/v2/version"), timeout_s=60, what="the second forwarder")
    login = _cli(env, "login", "--url", url, "--token", state["token"])
    assert login.returncode == 0, login.stdout + login.stderr
    proxy = subprocess.Popen(
        [*TASKFABRIC, "globus-compute", "proxy", "--port", str(COMPUTE_PORT)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    compute_fabric["started"].append(proxy)
    wait_until(lambda: _answers(f"http://localhost:{COMPUTE_PORT}/v2/version"), timeout_s=30, what="the proxy")
    sdk_env = _sdk_env(compute_fabric, tmp_path / "sdk")
    assert sdk_env["GLOBUS_SDK_SERVICE_URL_AUTH"] == url + "/"
    output = _run_script(sdk_python, sdk_env, "quick", compute_fabric["endpoint_id"])
    assert "ok executor 50\n" in output and "ok run\n" in output, output


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False
