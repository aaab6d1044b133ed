"""How an agent reaches the broker: its endpoint id and its own broker credentials and queues.

Written to `connection.json` (mode 0600) in the endpoint's folder when the endpoint registers with
the forwarder (the `broker` part of the registration answer, see docs/api.md), read by the agent.
A file written before the control queue existed has no `control_queue`: it still loads (the agent
then takes no cancellations, and says so, until the endpoint registers again). For an amqps broker
the forwarder may send the CA certificate to trust (`ca_certificate`, PEM); the endpoint owner's
`broker_ca_file` in config.yaml overrides it (`broker_ssl_context`). With a broker cluster the
answer lists every member (`amqp_urls`): the agent's transport moves to the next one when its
connection fails (`broker_urls`; a file without the list uses `amqp_url` alone).
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from taskfabric.errors import ConfigError
from taskfabric.private_files import write_private
from taskfabric.protocol.api import BrokerAccess, EndpointRegistered, parse
from taskfabric.tls import client_ssl_context

__all__ = ["EndpointConnection"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConnection(BrokerAccess):
    """An endpoint's identity and broker access (the `BrokerAccess` of its registration answer,
    with its id and the status period the service suggested).

    `control_queue` is None in connection files older than cancellation; `tasks_exchange` is None
    when an older forwarder registered the endpoint (tasks not started then stay in the ledger on a
    graceful stop and run at the next start)."""

    endpoint_id: uuid.UUID
    status_period_s: float | None = None
    #: the endpoint's allow-list as the forwarder stored it at registration (None: any function)
    allowed_functions: list[str] | None = None

    @classmethod
    def from_registration(cls, answer: Mapping[str, Any]) -> EndpointConnection:
        """From the forwarder's answer to `POST /v1/endpoints` (`EndpointRegistered`); raises
        `ProtocolError` for an answer that is not one."""
        registered = parse(EndpointRegistered, answer)
        connection = cls.of(registered.endpoint_id, registered.broker, status_period_s=registered.status_period_s)
        if registered.allowed_functions is None:
            return connection
        allowed = sorted(str(function_id) for function_id in registered.allowed_functions)
        return dataclasses.replace(connection, allowed_functions=allowed)

    @classmethod
    def of(
        cls, endpoint_id: uuid.UUID, broker: BrokerAccess, *, status_period_s: float | None = None
    ) -> EndpointConnection:
        """An endpoint's connection from its broker access (see `Topology.broker_access`)."""
        return cls(endpoint_id=endpoint_id, status_period_s=status_period_s, **_fields_of(broker))

    def secret_values(self) -> list[str]:
        """The broker password, as it is and URL-quoted: what must not reach a task's environment
        (see `taskfabric.secret_env`)."""
        quoted = urllib.parse.urlsplit(self.amqp_url).password
        if not quoted:
            return []
        return list(dict.fromkeys((urllib.parse.unquote(quoted), quoted)))

    def broker_ssl_context(self, broker_ca_file: Path | None = None) -> ssl.SSLContext | None:
        """How the agent verifies an amqps broker: against the owner's `broker_ca_file` when set,
        else the CA the forwarder sent, else the system's trust store. None for an amqp URL."""
        if urllib.parse.urlsplit(self.amqp_url).scheme != "amqps":
            return None
        if broker_ca_file is not None:
            return client_ssl_context(broker_ca_file, key="broker_ca_file")
        if self.ca_certificate is not None:
            return client_ssl_context(ca_pem=self.ca_certificate, key="ca_certificate")
        return client_ssl_context()

    @classmethod
    def load(cls, path: Path) -> EndpointConnection:
        try:
            data = json.loads(path.read_text())
            data["endpoint_id"] = uuid.UUID(data["endpoint_id"])
            return cls(**data)
        except FileNotFoundError:
            raise ConfigError(
                f"{path} does not exist: register the endpoint first (taskfabric endpoint start)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a valid connection file: {exc}", source=str(path)) from None

    def save(self, path: Path) -> None:
        data = dataclasses.asdict(self)
        data["endpoint_id"] = str(self.endpoint_id)
        write_private(path, json.dumps(data, indent=2))


def _fields_of(broker: BrokerAccess) -> dict[str, Any]:
    return {field.name: getattr(broker, field.name) for field in dataclasses.fields(BrokerAccess)}
