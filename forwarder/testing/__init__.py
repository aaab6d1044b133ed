"""Test helpers for the forwarder, usable by every component's tests: real parts, no mocks.

- `ForwarderProcess`: `taskfabric forwarder serve` as a subprocess on a free port, with a config
  file written for it; waits until it answers; stops it with SIGTERM (or `kill()`s it).
- `haproxy.HAProxy` (imported by module): HAProxy in front of forwarder replicas, on a free port.
- `postgres_for_tests()`: a throwaway PostgreSQL database: `TASKFABRIC_TEST_POSTGRES_URL` when set;
  else a fresh database on the server at 127.0.0.1:5432; else a private cluster started with
  Debian's `initdb`/`pg_ctl` in a temporary directory. If none works it raises `StoreError` naming
  what was tried (tests fail, they never skip).
- `GlobusAuthStandIn`: a loopback HTTP server implementing Globus Auth's token introspection
  (`POST /v2/oauth2/token/introspect`, form-encoded, HTTP Basic client auth); point
  `GLOBUS_SDK_SERVICE_URL_AUTH` at `.url` and the production code path talks to it.
- `FakeEndpoint`: the broker side of an endpoint agent, logged in with the endpoint's own
  credentials from its registration: reads task batches, publishes results and status reports.
- `MemoryEndpointUsers`: the management API's endpoint users in a dict, for an `AdminBrokerLink`
  on a `MemoryTransport` (unit tests).
- `ForwarderApi`: a small HTTP client of the API (one user's token).
- `abuse` (imported by module, not re-exported): hostile clients on raw sockets (uploads that
  watch for an early answer, chunked bodies, slow headers, a WebSocket that pings and never reads)
  for the limit tests and `benchmarks/abuse.py`.

One module each: `process`, `postgres`, `globus`, `endpoint`, `api`, `abuse`, `haproxy`.
"""

from __future__ import annotations

from taskfabric.forwarder.testing.api import ForwarderApi
from taskfabric.forwarder.testing.endpoint import FakeEndpoint, MemoryEndpointUsers
from taskfabric.forwarder.testing.globus import GlobusAuthStandIn
from taskfabric.forwarder.testing.postgres import POSTGRES_URL_ENV, postgres_for_tests
from taskfabric.forwarder.testing.process import ForwarderProcess

__all__ = [
    "POSTGRES_URL_ENV",
    "FakeEndpoint",
    "ForwarderApi",
    "ForwarderProcess",
    "GlobusAuthStandIn",
    "MemoryEndpointUsers",
    "postgres_for_tests",
]
