"""The forwarder: taskfabric's HTTP service, between researchers' clients and endpoints.

Its job: authenticate users and endpoints (local tokens, or Globus Auth introspection), keep the
registry of functions and endpoints, store tasks and their results, route each submitted batch to
its endpoint's task queue in few confirmed AMQP messages, ingest results from every endpoint's
result queue (accepting only what the endpoint's own broker user published), and push results to
clients over a WebSocket stream. It mints a narrow broker user per endpoint at registration.

Who it talks to: clients (`Client`, `Executor`) and endpoint agents over HTTP (docs/api.md);
RabbitMQ over AMQP as its administrator user, and over the management API to create and delete
endpoint users; Globus Auth, when configured.

Where its state is: the store (SQLite by default at `$TASKFABRIC_HOME/forwarder/forwarder.db`,
PostgreSQL by URL): users, hashed tokens, functions, endpoints, tasks and results. Messages in
flight are in the broker's queues. Everything in memory (function body cache, token cache,
stream subscriptions, the latest endpoint status) can be lost without losing anything accepted.

Layers, outside in: `cli` -> `app`/`routes` (HTTP) -> `service.Forwarder` -> `functions`,
`endpoints`, `tasks`, `stream`, `ingest` -> `store` (SQL) and `broker`/`consumers` (AMQP).
In front of the routes, `connections` (header deadline, connection limit, WebSocket caps, in
uvicorn) and `limits.RequestGuard` (token and body limit checked on the headers) bound what a
connection can cost before anyone is authenticated.
Per-user quotas (`quotas`: 429 with Retry-After) are checked by `tasks` and `endpoints`; the ingest
screens what endpoints send (`result_limits`) and takes endpoints in turns (`fair_queue`); result
consumers are spread over broker connections (`consumer_pool`).
Sharing: `access` holds the rules; `endpoint_sharing` reads and changes endpoints' access
documents (grants, `public`), checks per-grant limits at submit and audits cross-user batches.
Multi-user endpoints: `user_endpoints` (design) names each user's own user endpoint; `tasks`
routes a multi-user endpoint's submits there and `endpoints` sends its parent the start command.
"""

from __future__ import annotations

from taskfabric.forwarder.admin import create_token, create_user, list_users, revoke_tokens
from taskfabric.forwarder.app import create_app
from taskfabric.forwarder.auth import AuthProvider, GlobusTokenProvider, LocalTokenProvider, hash_token, new_token
from taskfabric.forwarder.cli import serve
from taskfabric.forwarder.records import Identity, TaskStatus
from taskfabric.forwarder.service import Forwarder
from taskfabric.forwarder.settings import AuthSettings, ForwarderSettings
from taskfabric.forwarder.store import Store

__all__ = [
    "AuthProvider",
    "AuthSettings",
    "Forwarder",
    "ForwarderSettings",
    "GlobusTokenProvider",
    "Identity",
    "LocalTokenProvider",
    "Store",
    "TaskStatus",
    "create_app",
    "create_token",
    "create_user",
    "hash_token",
    "list_users",
    "new_token",
    "revoke_tokens",
    "serve",
]
