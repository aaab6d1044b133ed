"""A small client of RabbitMQ's management HTTP API: broker users and their permissions.

The forwarder uses it to give each endpoint its own broker user, allowed only its own queues
(see `Topology.endpoint_permissions`), and to revoke it (deleting a user closes its connections).
Given the management URLs of several cluster members, it sends each request to the member that
last answered and moves on to the next one when a member cannot be reached (any member serves
the whole cluster's users, permissions and queues).
"""

from __future__ import annotations

import logging
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx

from taskfabric.broker_config.topology import EndpointPermissions
from taskfabric.errors import AccessRefused, BrokerError, BrokerUnavailable, NotFound
from taskfabric.transport import redact_url

__all__ = ["ManagementClient", "vhost_of"]

log = logging.getLogger(__name__)


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (`amqp://host:port/VHOST`, URL-quoted; "/" when the
    path is empty, as pika reads it)."""
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


class ManagementClient:
    """Talks to ``http://user:pass@host:port`` (the management URL; or a list of them, one per
    cluster member) for virtual host `vhost`."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        vhost: str = "/",
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` verifies an https management API (default: the system's trust store)."""
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("no management URL given")
        self._bases = [_base_of(one) for one in urls]
        self._urls = urls
        self._current = 0
        self._vhost = vhost
        self._http = httpx.Client(timeout=timeout_s, verify=ssl_context or True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """The broker's overview (version, node, totals)."""
        result: dict[str, Any] = self._request("GET", "/overview").json()
        return result

    def cluster_nodes(self) -> list[str]:
        """The names of the broker's nodes (one for a single node, several for a cluster)."""
        rows = self._request("GET", "/nodes", params={"columns": "name"}).json()
        return [str(row["name"]) for row in rows if isinstance(row, dict) and "name" in row]

    def create_user(self, name: str, password: str, *, tags: str = "") -> None:
        """Create (or update the password of) a broker user."""
        self._request("PUT", f"/users/{_q(name)}", json={"password": password, "tags": tags})

    def delete_user(self, name: str) -> None:
        """Delete a broker user, which also closes its connections. Missing users are fine."""
        self._request("DELETE", f"/users/{_q(name)}", missing_ok=True)

    def user_exists(self, name: str) -> bool:
        return self._request("GET", f"/users/{_q(name)}", missing_ok=True).status_code == 200

    def create_vhost(self, *, description: str = "") -> None:
        """Create this client's virtual host (fine if it exists)."""
        self._request("PUT", f"/vhosts/{_q(self._vhost)}", json={"description": description})

    def vhost_permissions_of(self, user: str) -> list[str]:
        """The virtual hosts on which `user` has any permissions."""
        rows = self._request("GET", f"/users/{_q(user)}/permissions").json()
        return [row["vhost"] for row in rows if isinstance(row, dict) and "vhost" in row]

    def set_permissions(self, user: str, permissions: EndpointPermissions) -> None:
        """Set a user's configure/write/read regexes on this client's virtual host."""
        body = {"configure": permissions.configure, "write": permissions.write, "read": permissions.read}
        self._request("PUT", f"/permissions/{_q(self._vhost)}/{_q(user)}", json=body)

    def connections_of(self, user: str) -> list[str]:
        """Names of the open connections authenticated as `user`."""
        rows = self._request("GET", "/connections", params={"columns": "name,user"}).json()
        return [row["name"] for row in rows if row.get("user") == user]

    def close_connections_of(self, user: str, *, reason: str = "credentials revoked") -> int:
        """Close every connection of `user`; returns how many were closed."""
        names = self.connections_of(user)
        for name in names:
            self._request("DELETE", f"/connections/{_q(name)}", headers={"X-Reason": reason}, missing_ok=True)
        return len(names)

    def import_definitions(self, body: str) -> None:
        """Import definitions (users, permissions, queues, bindings...) in one request: a JSON
        document as `GET /api/definitions` exports it, or part of one. Used for bulk registration
        in benchmarks (forwarder/testing/bulk_endpoints.py)."""
        self._request("POST", "/definitions", content=body, headers={"content-type": "application/json"})

    def node_memory(self) -> dict[str, Any]:
        """The first node's `mem_used` (bytes) and object totals (queues, connections,
        channels, consumers), from `/api/nodes` and `/api/overview`: what a benchmark reports."""
        for _ in range(30):  # a node that just started has no statistics for a few seconds
            nodes = self._request("GET", "/nodes", params={"columns": "name,mem_used"}).json()
            if nodes and "mem_used" in nodes[0]:
                break
            time.sleep(1.0)
        else:
            raise BrokerError("the management API reports no mem_used for the node")
        totals = self.overview().get("object_totals", {})
        return {"node": nodes[0]["name"], "mem_used": int(nodes[0]["mem_used"]), **totals}

    def consumer_counts(self) -> dict[str, int]:
        """How many consumers each queue of this virtual host has (one request; the figures lag
        by the management plugin's statistics interval)."""
        rows = self._request("GET", f"/queues/{_q(self._vhost)}", params={"columns": "name,consumers"}).json()
        return {row["name"]: int(row.get("consumers") or 0) for row in rows if isinstance(row, dict) and "name" in row}

    def queue_states(self) -> dict[str, dict[str, Any]]:
        """Every queue of this virtual host by name, with its type and, for quorum queues, its
        leader and online members (one request; a few columns only).

        Asked without statistics (`disable_stats`): the queues' own current state rather than the
        statistics database's last sample, which lags and, for a quorum queue whose Raft server
        stopped, still showed it `running` with its member online (RabbitMQ 3.10.8); and 3-4x
        cheaper for the broker (11,650 queues: 2.9 s against 9.9-13 s on a busy 2-core node,
        past this client's 10 s timeout; benchmarks/README.md "Endpoints at scale")."""
        params = {
            "disable_stats": "true",
            "enable_queue_totals": "true",
            "columns": "name,type,leader,online,members,state",
        }
        rows = self._request("GET", f"/queues/{_q(self._vhost)}", params=params).json()
        return {row["name"]: row for row in rows if isinstance(row, dict) and "name" in row}

    def queue(self, name: str) -> dict[str, Any]:
        """One queue of this virtual host as the management API describes it (`arguments`,
        `leader`, `members`, ...); `NotFound` when it does not exist."""
        result: dict[str, Any] = self._request("GET", f"/queues/{_q(self._vhost)}/{_q(name)}").json()
        return result

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes as the answering member sees them (`name`, `running`)."""
        rows = self._request("GET", "/nodes", params={"columns": "name,running"}).json()
        return [row for row in rows if isinstance(row, dict) and "name" in row]

    def _request(self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.status_code == 404 and missing_ok:
            return response
        if response.status_code in (401, 403):
            raise AccessRefused(f"management API refused {method} {path}: {response.status_code}")
        if response.status_code == 404:
            raise NotFound(f"management API: {method} {path} not found")
        if response.status_code >= 400:
            raise BrokerError(f"management API {method} {path} failed: {response.status_code} {response.text[:200]}")
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer of the first member that can be reached, starting with the last one that
        answered. A request that reached a member is never sent to another (it may have acted)."""
        failures: list[str] = []
        for step in range(len(self._bases)):
            index = (self._current + step) % len(self._bases)
            base, auth = self._bases[index]
            try:
                response = self._http.request(method, base + path, auth=auth, **kwargs)
            except httpx.TransportError as exc:
                if not _not_sent(exc):
                    raise BrokerUnavailable(
                        f"management API at {redact_url(self._urls[index])} failed: {exc}"
                    ) from None
                failures.append(f"{redact_url(self._urls[index])}: {exc}")
                continue
            except httpx.HTTPError as exc:
                raise BrokerUnavailable(f"management API at {redact_url(self._urls[index])} failed: {exc}") from None
            if step:
                log.info("management API: now using %s", redact_url(self._urls[index]))
            self._current = index
            return response
        raise BrokerUnavailable(f"management API unreachable: {'; '.join(failures)}")


def _not_sent(exc: httpx.TransportError) -> bool:
    """Whether the request surely never reached the member (safe to send to another)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def _base_of(url: str) -> tuple[str, tuple[str, str]]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"management URL must be http(s)://user:pass@host:port, got {redact_url(url)!r}")
    auth = (urllib.parse.unquote(parts.username or "guest"), urllib.parse.unquote(parts.password or "guest"))
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}/api", auth


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
