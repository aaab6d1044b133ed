"""Each package re-exports its public names in __all__, and they all exist."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "taskfabric",
    "taskfabric.protocol",
    "taskfabric.transport",
    "taskfabric.errors",
    "taskfabric.settings",
    "taskfabric.testing",
    "taskfabric.broker_config",
    "taskfabric.forwarder",
    "taskfabric.endpoint_agent",
    "taskfabric.client",
    "taskfabric.manager",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), "duplicate names in __all__"
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names {member!r}, which does not exist"


def test_protocol_exports() -> None:
    from taskfabric import protocol

    assert set(protocol.__all__) >= {
        "pack",
        "unpack",
        "unpack_as",
        "ProtocolError",
        "Task",
        "TaskBatch",
        "Result",
        "ResultBatch",
        "EndpointStatus",
        "ManagerRegister",
        "ManagerAccepted",
        "Heartbeat",
        "Drain",
    }


def test_transport_exports() -> None:
    from taskfabric import transport

    assert set(transport.__all__) >= {
        "Transport",
        "RabbitTransport",
        "MemoryTransport",
        "MemoryBroker",
        "OutgoingMessage",
        "Delivery",
    }


def test_broker_config_exports() -> None:
    from taskfabric import broker_config

    assert set(broker_config.__all__) >= {"Topology", "RabbitNode", "ManagementClient", "new_queue_secret"}
