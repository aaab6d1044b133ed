"""Fixtures for endpoint-side tests: real agents (subprocesses) on a real broker, without a forwarder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfabric.endpoint_agent.testing import EndpointHarness
from taskfabric.testing import BrokerUnderTest
from taskfabric.transport import RabbitTransport


@pytest.fixture
def endpoints(broker: BrokerUnderTest, rabbit: RabbitTransport, tmp_path: Path) -> Iterator[EndpointHarness]:
    """Start real endpoint agents on the session broker."""
    if broker.management_url is None:
        pytest.fail("endpoint tests need the broker's management API: set TASKFABRIC_TEST_MANAGEMENT_URL")
    harness = EndpointHarness(rabbit, broker.amqp_url, broker.management_url, tmp_path)
    yield harness
    harness.cleanup()
