"""The fault campaign's fixture: one fabric per module (see taskfabric/testing/campaign.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskfabric.broker_config import RabbitNode
from taskfabric.testing.campaign import Campaign


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    folder = tmp_path_factory.mktemp("faults")
    node = RabbitNode(folder / "node")
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    running: Campaign | None = None
    try:
        running = Campaign(node, folder / "fabric")
        yield running
    finally:
        if running is not None:
            running.close()
        node.stop()
        patch.undo()
