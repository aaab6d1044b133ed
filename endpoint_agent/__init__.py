"""The endpoint agent: one per resource (a laptop, a lab server, a cluster's login node).

Its job: take task batches from the endpoint's own task queue, record them in its ledger, hand them
in batches to managers with free capacity, and publish their results to the endpoint's result
queue, without losing a task when anything crashes (see the ack point in `ledger.py`). It asks a
Parsl provider (Local, Slurm, PBS, ...) for blocks of managers as the demand grows and shrinks.

Who it talks to: RabbitMQ with the endpoint's own narrow credentials (`EndpointBrokerLink`: reads
its task queue, publishes results, status reports and dead letters); its managers over a ZeroMQ
ROUTER (`Interchange` over `ManagerSockets`, CurveZMQ-encrypted by default); the batch scheduler
through the provider (`Scaler`); the forwarder's HTTP API only to register (`taskfabric endpoint
start`, through the client library).

Where its state is: the on-disk `Ledger` (`ledger.sqlite`: tasks taken and not yet answered,
results not yet confirmed by the broker), in the endpoint's folder (`AgentPaths`, by default
`$TASKFABRIC_HOME/endpoints/NAME/`) next to `config.yaml` (`EndpointConfig`) and
`connection.json` (`EndpointConnection`). Everything else (tasks waiting for a manager, the
managers' outstanding tasks, results in flight) is in memory and rebuilt from the ledger at start.

A multi-user endpoint (`multi_user: true`) runs `multi_user.parent.MultiUserAgent` instead: a
privileged parent that takes no tasks and starts one ordinary agent per (user, user config) as
the user's mapped local account (design: `multi_user/__init__.py`).

Layers, outside in: `cli_endpoint` / `cli_agent` -> `local` (endpoint folders) -> `Agent` (the
loop) -> `EndpointBrokerLink`, `Interchange`, `Scaler`, `Ledger`. The agent takes its transport,
sockets and scaler as optional arguments: unit tests run its loop on a `MemoryTransport` with the
stand-ins of `taskfabric.endpoint_agent.testing`.
"""

from __future__ import annotations

import typing

from taskfabric.endpoint_agent.parsl_light import defer_parsl_init as _defer_parsl_init
from taskfabric.lazy import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from taskfabric.endpoint_agent.agent import Agent
    from taskfabric.endpoint_agent.broker_link import EndpointBrokerLink
    from taskfabric.endpoint_agent.cli_agent import run_agent
    from taskfabric.endpoint_agent.config import EndpointConfig
    from taskfabric.endpoint_agent.connection import EndpointConnection
    from taskfabric.endpoint_agent.interchange import Interchange
    from taskfabric.endpoint_agent.ledger import HeldTask, Ledger
    from taskfabric.endpoint_agent.local import (
        ForwarderEndpoints,
        LocalEndpoint,
        configure_endpoint,
        delete_endpoint,
        list_local_endpoints,
        register_endpoint,
        start_endpoint,
        stop_endpoint,
    )
    from taskfabric.endpoint_agent.paths import AgentPaths
    from taskfabric.endpoint_agent.scaler import BlockScaler, Scaler
    from taskfabric.endpoint_agent.zmq_router import ManagerSockets, RouterSocket

__all__ = [
    "Agent",
    "AgentPaths",
    "BlockScaler",
    "EndpointBrokerLink",
    "EndpointConfig",
    "EndpointConnection",
    "ForwarderEndpoints",
    "HeldTask",
    "Interchange",
    "Ledger",
    "LocalEndpoint",
    "ManagerSockets",
    "RouterSocket",
    "Scaler",
    "configure_endpoint",
    "delete_endpoint",
    "list_local_endpoints",
    "register_endpoint",
    "run_agent",
    "start_endpoint",
    "stop_endpoint",
]

#: where each public name lives. They are imported on first use (PEP 562), so that a process that
#: needs one part does not import them all: the supervisor and `taskfabric endpoint` commands need
#: no agent loop, and Parsl alone costs about a second of CPU to import.
_SOURCES: dict[str, str] = {
    "Agent": "taskfabric.endpoint_agent.agent",
    "AgentPaths": "taskfabric.endpoint_agent.paths",
    "BlockScaler": "taskfabric.endpoint_agent.scaler",
    "configure_endpoint": "taskfabric.endpoint_agent.local",
    "delete_endpoint": "taskfabric.endpoint_agent.local",
    "EndpointBrokerLink": "taskfabric.endpoint_agent.broker_link",
    "EndpointConfig": "taskfabric.endpoint_agent.config",
    "EndpointConnection": "taskfabric.endpoint_agent.connection",
    "ForwarderEndpoints": "taskfabric.endpoint_agent.local",
    "HeldTask": "taskfabric.endpoint_agent.ledger",
    "Interchange": "taskfabric.endpoint_agent.interchange",
    "Ledger": "taskfabric.endpoint_agent.ledger",
    "list_local_endpoints": "taskfabric.endpoint_agent.local",
    "LocalEndpoint": "taskfabric.endpoint_agent.local",
    "ManagerSockets": "taskfabric.endpoint_agent.zmq_router",
    "register_endpoint": "taskfabric.endpoint_agent.local",
    "RouterSocket": "taskfabric.endpoint_agent.zmq_router",
    "run_agent": "taskfabric.endpoint_agent.cli_agent",
    "Scaler": "taskfabric.endpoint_agent.scaler",
    "start_endpoint": "taskfabric.endpoint_agent.local",
    "stop_endpoint": "taskfabric.endpoint_agent.local",
}


# Before any module of this package imports Parsl: see parsl_light's docstring (agent start time).
_defer_parsl_init()


__getattr__ = _lazy_attributes(__name__, _SOURCES)
