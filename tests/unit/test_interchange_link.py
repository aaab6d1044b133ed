"""The interchange's ROUTER and a manager's DEALER over loopback TCP, plain and with CurveZMQ: a
manager that knows the interchange's public key talks to it; one without it (or with another key)
gets nothing through."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.launch import ManagerLaunch
from taskfabric.endpoint_agent.zmq_router import ManagerSockets, curve_keypair
from taskfabric.manager.pool import REPORT_START_AFTER_S
from taskfabric.manager.zmq_link import InterchangeLink, LinkError


def _exchange(router: ManagerSockets, link: InterchangeLink, timeout_s: float = 5.0) -> list[tuple[bytes, bytes]]:
    """Send one frame from the manager; what the router got within `timeout_s`."""
    link.send(b"hello")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _ = router.poll(0.05)
        if ready:
            return router.receive_all()
    return []


@pytest.fixture
def keys() -> tuple[bytes, bytes]:
    return curve_keypair()


@pytest.fixture
def encrypted_router(keys: tuple[bytes, bytes]) -> Iterator[ManagerSockets]:
    router = ManagerSockets("127.0.0.1", curve_secret_key=keys[1])
    yield router
    router.close()


def test_an_encrypted_link_carries_frames_both_ways(
    encrypted_router: ManagerSockets, keys: tuple[bytes, bytes]
) -> None:
    assert encrypted_router.encrypted
    link = InterchangeLink(encrypted_router.address, b"manager-1", server_key=keys[0])
    try:
        assert _exchange(encrypted_router, link) == [(b"manager-1", b"hello")]
        assert encrypted_router.send(b"manager-1", b"tasks")
        deadline = time.monotonic() + 5
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            link.poll(0.05)
            got = link.receive_all()
        assert got == [b"tasks"]
    finally:
        link.close()


@pytest.mark.parametrize("which", ["no key", "another key"])
def test_a_manager_without_the_interchanges_key_gets_nothing_through(
    encrypted_router: ManagerSockets, which: str
) -> None:
    server_key = None if which == "no key" else curve_keypair()[0]
    link = InterchangeLink(encrypted_router.address, b"intruder", server_key=server_key)
    try:
        assert _exchange(encrypted_router, link, timeout_s=1.0) == []
        assert not encrypted_router.send(b"intruder", b"tasks")  # never connected, so unknown
    finally:
        link.close()


def test_a_plain_router_still_works_without_keys() -> None:
    router = ManagerSockets("127.0.0.1")
    link = InterchangeLink(router.address, b"manager-2")
    try:
        assert not router.encrypted
        assert _exchange(router, link) == [(b"manager-2", b"hello")]
    finally:
        link.close()
        router.close()


def test_a_malformed_public_key_is_a_link_error() -> None:
    with pytest.raises(LinkError, match="not a CurveZMQ public key"):
        InterchangeLink("tcp://127.0.0.1:1", b"m", server_key=b"too short")


def _launch(tmp_path: Path) -> ManagerLaunch:
    return ManagerLaunch(
        interchange_address="tcp://10.0.0.1:55001",
        workers=2,
        prefetch=0,
        heartbeat_period_s=1,
        heartbeat_threshold_s=5,
        max_result_bytes=1024,
        token_file=tmp_path / "manager.token",
        log_root=tmp_path,
    )


def test_the_manager_command_names_the_key_file_only_when_encrypted(tmp_path: Path) -> None:
    plain = _launch(tmp_path)
    assert "--interchange-key-file" not in plain.argv("b-0")
    key_file = tmp_path / "interchange.key"
    argv = dataclasses.replace(plain, interchange_key_file=key_file).argv("b-0")
    assert argv[argv.index("--interchange-key-file") + 1] == str(key_file)
    assert "--token-file" in argv  # the key adds to the token, never replaces it


def test_the_manager_command_carries_the_start_report_delay(tmp_path: Path) -> None:
    """The endpoint's `started_report_delay_s` reaches the manager (which hands it to each worker,
    tests/integration/test_worker_starts.py)."""
    launch = _launch(tmp_path)
    assert launch.started_report_delay_s == EndpointConfig().started_report_delay_s == REPORT_START_AFTER_S
    argv = dataclasses.replace(launch, started_report_delay_s=2.5).argv("b-0")
    assert argv[argv.index("--started-report-delay") + 1] == "2.5"
