"""The fault campaign's fixture: one fabric per module and queue type (see
taskfabric/testing/campaign.py), on the session's private node (`private_node`, tests/conftest.py):
the cases kill and stop it. Every case runs on quorum queues; the cases marked `every_queue_type`
(faults of the broker, its links and the agent's unacked deliveries) run on classic queues too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskfabric.broker_config import QUEUE_TYPES, RabbitNode
from taskfabric.testing.campaign import Campaign


@pytest.fixture(scope="module")
def campaign(
    private_node: RabbitNode, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Campaign]:
    folder = tmp_path_factory.mktemp(f"faults-{request.param}")
    patch = pytest.MonkeyPatch()
    patch.setenv("TASKFABRIC_HOME", str(folder / "home"))
    running: Campaign | None = None
    try:
        running = Campaign(private_node, folder / "fabric", queue_type=request.param)
        yield running
    finally:
        if running is not None:
            running.close()
        patch.undo()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every case runs on quorum queues; a case marked `every_queue_type` on classic queues too
    (the other cases exercise what only quorum queues have, e.g. a leaderless queue)."""
    if "campaign" in metafunc.fixturenames:
        every = metafunc.definition.get_closest_marker("every_queue_type") is not None
        metafunc.parametrize("campaign", QUEUE_TYPES if every else ("quorum",), indirect=True, scope="module")
