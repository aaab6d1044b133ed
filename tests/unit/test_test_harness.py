"""The broker harness fails loudly (never skips) when no broker can be had."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfabric.broker_config import node as node_module
from taskfabric.errors import BrokerUnavailable
from taskfabric.testing import AMQP_URL_ENV, broker_for_tests, wait_until


def test_no_broker_fails_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AMQP_URL_ENV, raising=False)
    monkeypatch.setattr(node_module, "_BIN_DIRS", (tmp_path / "nowhere",))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerUnavailable) as caught, broker_for_tests(tmp_path):
        pass
    message = str(caught.value)
    assert "apt-get install -y rabbitmq-server" in message
    assert AMQP_URL_ENV in message


def test_external_broker_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AMQP_URL_ENV, "amqp://u:p@example.invalid:5672/%2F")
    monkeypatch.setenv("TASKFABRIC_TEST_MANAGEMENT_URL", "http://u:p@example.invalid:15672")
    with broker_for_tests() as found:
        assert found.amqp_url == "amqp://u:p@example.invalid:5672/%2F"
        assert found.management_url == "http://u:p@example.invalid:15672"
        assert found.node is None


def test_wait_until_returns_the_value_or_times_out() -> None:
    values = iter([0, 0, 5])
    assert wait_until(lambda: next(values), interval_s=0) == 5
    with pytest.raises(TimeoutError, match=r"timed out after 0\.05 s waiting for never"):
        wait_until(lambda: False, timeout_s=0.05, what="never")
