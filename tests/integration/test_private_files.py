"""Files holding secrets are private whatever the umask: each check runs in a fresh process whose
umask is the usual 022 (a file made with the default mode would be 0644, a folder 0755), on a
real SQLite store and real files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

#: made in the child process: the store (SQLite, WAL), the audit log, a rotating log file with a
#: rotation, a rewritten client.json, an endpoint connection file and an agent secret file
_CHILD = textwrap.dedent(
    """
    import json, logging, os, sys, uuid
    from pathlib import Path

    os.umask(0o022)
    root = Path(sys.argv[1])
    os.environ["TASKFABRIC_HOME"] = str(root / "home")

    from taskfabric.client.config import ClientConfig, client_config_path
    from taskfabric.endpoint_agent.launch import write_private_file
    from taskfabric.forwarder import ForwarderSettings, create_token, create_user
    from taskfabric.logs import setup_logging

    settings = ForwarderSettings.from_mapping({"database_url": f"sqlite:///{root / 'data' / 'forwarder.db'}"})
    create_user(settings, "ada")
    create_token(settings, "ada")

    logs = root / "logs" / "agent.log"
    setup_logging(logging.INFO, file=logs, stream=False)
    handler = logging.getLogger().handlers[0]
    logging.getLogger("t").info("before the rotation")
    handler.doRollover()
    logging.getLogger("t").info("after the rotation")

    stale = client_config_path()
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    os.chmod(stale, 0o644)
    ClientConfig(url="http://127.0.0.1:8470", token="tf_" + "a" * 43).save()

    write_private_file(root / "agent" / "registration.token", "secret")
    print(json.dumps({"audit": str(settings.audit_log_path)}))
    """
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secret_files_are_0600_in_0700_folders_under_umask_022(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    audit = Path(json.loads(done.stdout)["audit"])
    data = tmp_path / "data"
    assert audit.parent == data
    files = [
        data / "forwarder.db",
        audit,
        tmp_path / "logs" / "agent.log",
        tmp_path / "logs" / "agent.log.1",
        tmp_path / "home" / "client.json",
        tmp_path / "agent" / "registration.token",
    ]
    files += [path for path in data.iterdir() if path.name.startswith("forwarder.db-")]  # WAL files, if kept
    assert {str(path): oct(_mode(path)) for path in files} == {str(path): oct(0o600) for path in files}
    for folder in (data, tmp_path / "logs", tmp_path / "agent"):
        assert _mode(folder) == 0o700, folder
    assert json.loads((tmp_path / "home" / "client.json").read_text())["url"] == "http://127.0.0.1:8470"


def test_a_shared_sticky_folder_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from taskfabric.forwarder.store import Store; "
            "Store.open(f'sqlite:///{sys.argv[1]}').close()",
            str(shared / "forwarder.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(shared) == 0o1777
    assert _mode(shared / "forwarder.db") == 0o600
