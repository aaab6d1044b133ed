"""The endpoint side against hostile or buggy neighbours (issue 12, item 8): a real agent, its real
manager and workers, on the session broker.

- a manager registration no agent should take (absurd numbers, wrong types, huge strings, a frame
  that is not msgpack) is refused with a reason, logged, and the agent and its real manager go on;
- a task's environment carries none of the credentials the agent or its managers hold.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import psutil

from taskfabric.endpoint_agent.testing import EndpointHarness, RunningEndpoint
from taskfabric.manager.zmq_link import InterchangeLink
from taskfabric.protocol import PROTOCOL_VERSION, Drain, EndpointStatus, unpack
from taskfabric.testing import wait_until


def square(x: int) -> int:
    return x * x


def environment() -> dict[str, str]:
    return dict(os.environ)


def _registration(token: str, **fields: Any) -> bytes:
    """A manager_register frame with any field values at all (the packer would refuse none of them
    either, but this shows the bytes a hostile peer sends)."""
    data = {"manager_id": uuid.uuid4().hex, "hostname": "hostile", "workers": 2, "registration_token": token}
    data.update(fields)
    return bytes([PROTOCOL_VERSION]) + msgpack.packb({"type": "manager_register", "data": data}, use_bin_type=True)


def _interchange_address(endpoint: RunningEndpoint) -> str:
    """The interchange's address, from the command line of the endpoint's real manager."""
    manager = psutil.Process(wait_until(endpoint.managers, timeout_s=30, what="a manager")[0])
    command = manager.cmdline()
    return command[command.index("--interchange") + 1]


def _answer(link: InterchangeLink, timeout_s: float = 10.0) -> Any:
    """The first message the interchange sends back on `link`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        link.poll(0.1)
        frames = link.receive_all()
        if frames:
            return unpack(frames[0])
    raise TimeoutError("the interchange did not answer")


def test_hostile_manager_registrations_are_refused_and_the_agent_keeps_working(endpoints: EndpointHarness) -> None:
    endpoint = endpoints.start()
    first = endpoint.run(square, 3)
    assert endpoint.collector.value(endpoint.wait([first])[first]) == 9
    blocks = endpoint.directory / "blocks"
    token = (blocks / "manager.token").read_text().strip()
    server_key = (blocks / "interchange.key").read_bytes().strip()
    address = _interchange_address(endpoint)

    hostile = {
        "workers=2**64-1": (_registration(token, workers=2**64 - 1), "workers must be between 1 and 4096"),
        "negative workers": (_registration(token, workers=-3), "workers must be between 1 and 4096"),
        "workers as text": (_registration(token, workers="lots"), "workers: expected an integer, got str"),
        "prefetch=2**63": (_registration(token, prefetch=2**63), "prefetch must be between 0 and"),
        "a long host name": (_registration(token, hostname="h" * 4000), "hostname must be at most 255 characters"),
        "a huge frame": (
            _registration(token, hostname="h" * 1_000_000),
            "-byte message before registering (at most 16384)",
        ),
        "huge unknown fields": (
            _registration(token, extra="x" * 100_000),
            "-byte message before registering (at most 16384)",
        ),
        "not msgpack": (bytes([PROTOCOL_VERSION]) + b"\xc1\xc1not msgpack", "not a valid msgpack envelope"),
        "no version byte": (b"{}", "unsupported protocol version"),
    }
    links = []
    try:
        for name, (frame, reason) in hostile.items():
            link = InterchangeLink(address, f"hostile-{uuid.uuid4().hex[:8]}".encode(), server_key=server_key)
            links.append(link)
            link.send(frame)
            answer = _answer(link)
            assert isinstance(answer, Drain), name
            assert answer.reason.startswith("registration refused") and reason in answer.reason, (name, answer)
    finally:
        for link in links:
            link.close()

    # the agent is alive, its real manager still runs tasks, and it never counted the hostile workers
    assert endpoint.agent.process is not None and endpoint.agent.process.poll() is None
    later = [endpoint.run(square, i) for i in range(5)]
    results = endpoint.wait(later, timeout_s=30)
    assert [endpoint.collector.value(results[task_id]) for task_id in later] == [i * i for i in range(5)]
    reported = len(endpoint.collector.statuses)
    wait_until(lambda: len(endpoint.collector.statuses) > reported + 1, timeout_s=10, what="fresh status reports")
    latest: EndpointStatus = endpoint.collector.statuses[-1]
    assert (latest.managers, latest.workers) == (1, 2)
    log = (endpoint.directory / "agent.log").read_text()
    assert log.count("refusing manager") >= len(hostile)
    assert "workers must be between 1 and 4096" in log
    assert "h" * 400 not in log  # a refused field's value is not copied into the log


def test_a_task_environment_carries_no_credentials(endpoints: EndpointHarness, tmp_path: Path) -> None:
    api_token = "tf-api-" + uuid.uuid4().hex
    leaked: dict[str, str] = {}

    def agent_env(connection: Any) -> dict[str, str]:
        password = connection.secret_values()[0]
        leaked.update(
            TASKFABRIC_TOKEN=api_token,  # a user who exported their API token to start the endpoint
            TASKFABRIC_MANAGER_TOKEN="stale-manager-token-" + uuid.uuid4().hex,
            TASKFABRIC_FORWARDER_DATABASE_URL="postgresql://svc:db-secret-1234@db/tf",
            MY_BROKER_URL=connection.amqp_url,  # the agent's broker password, under a name we cannot know
            ODD_PLACE_FOR_A_PASSWORD=f"pw={password};",
            HARMLESS_SETTING="keep-me",
        )
        return {**os.environ, **leaked}

    endpoint = endpoints.start(agent_env=agent_env)
    task_id = endpoint.run(environment)
    seen: dict[str, str] = endpoint.collector.value(endpoint.wait([task_id])[task_id])

    registration_token = (endpoint.directory / "blocks" / "manager.token").read_text().strip()
    secrets = {
        "the API token": api_token,
        "the registration token": registration_token,
        "the broker password": endpoint.connection.secret_values()[0],
        "the forwarder's database password": "db-secret-1234",
    }
    for what, secret in secrets.items():
        assert not [name for name, value in seen.items() if secret in value or secret in name], what
    assert not {"TASKFABRIC_TOKEN", "TASKFABRIC_MANAGER_TOKEN", "MY_BROKER_URL"} & set(seen)
    assert not [name for name in seen if name.startswith(("TASKFABRIC_FORWARDER_", "TASKFABRIC_TEST_"))]
    assert seen["HARMLESS_SETTING"] == "keep-me"
    assert seen["TASKFABRIC_TASK_ID"] == str(task_id)
    # nor do the agent and manager processes: a task of the same user can read their
    # /proc/PID/environ, which keeps what a process started with even after it unsets a variable
    agent_pid = endpoint.agent.pid  # the agent re-executed itself without them (same pid)
    for pid in (agent_pid, endpoint.managers()[0]):
        started_with = Path(f"/proc/{pid}/environ").read_bytes()
        for what, secret in secrets.items():
            assert secret.encode() not in started_with, (pid, what)
        assert b"TASKFABRIC_TOKEN=" not in started_with and b"MY_BROKER_URL=" not in started_with
    log = (endpoint.directory / "agent.log").read_text()
    assert api_token not in log and secrets["the broker password"] not in log
