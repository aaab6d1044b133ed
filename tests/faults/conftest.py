"""The fault campaign's fixture: one fabric per module (see taskfabric/testing/campaign.py), on the
session's private node (`private_node`, tests/conftest.py): the cases kill and stop it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskfabric.broker_config import RabbitNode
from taskfabric.testing.campaign import Campaign


@pytest.fixture(scope="module")
def campaign(private_node: RabbitNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    folder = tmp_path_factory.mktemp("faults")
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    running: Campaign | None = None
    try:
        running = Campaign(private_node, folder / "fabric")
        yield running
    finally:
        if running is not None:
            running.close()
        patch.undo()
