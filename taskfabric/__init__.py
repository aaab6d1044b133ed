"""taskfabric: a self-hostable, federated Functions-as-a-Service fabric for research computing.

This package is the shared kernel. The components live in their own top-level folders and are
mapped into this namespace (see setup.cfg):

- `taskfabric.client`          Client and Executor for researchers (HTTP to the forwarder)
- `taskfabric.forwarder`       the service: auth, registry, task store, routing via RabbitMQ
- `taskfabric.endpoint_agent`  one per resource: broker link, ZeroMQ interchange, scaling
- `taskfabric.manager`         one per compute node: a pool of worker processes
- `taskfabric.broker_config`   the RabbitMQ topology as code and a private broker node

The kernel holds what they share: the wire protocol (`taskfabric.protocol`), the broker transport
(`taskfabric.transport`, the only code that imports pika), the error tree (`taskfabric.errors`),
settings and logging helpers, and the root CLI (`taskfabric.cli`). It keeps no state.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
