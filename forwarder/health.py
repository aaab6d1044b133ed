"""Health checks for load balancers and orchestrators: `/healthz` and `/readyz`.

Neither needs a token and neither says anything about the configuration (no URLs, no hosts, no
error text): `/healthz` answers 200 while the process serves HTTP; `/readyz` answers 200 when the
store answers a trivial query (bounded by `READY_STORE_TIMEOUT_S`) and the broker connection is
up, else 503 naming the part that is not (`{"ready": false, "checks": {"store": "ok",
"broker": "unavailable"}}`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskfabric.errors import TaskfabricError
from taskfabric.tls import client_ssl_context

if TYPE_CHECKING:
    from taskfabric.forwarder.service import Forwarder

__all__ = [
    "CHECK_OK",
    "CHECK_UNAVAILABLE",
    "READY_STORE_TIMEOUT_S",
    "Readiness",
    "check_readiness",
    "health_router",
    "probe_forwarder",
]

log = logging.getLogger(__name__)

READY_STORE_TIMEOUT_S = 5.0
CHECK_OK = "ok"
CHECK_UNAVAILABLE = "unavailable"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Readiness:
    """Whether each part the forwarder needs answers."""

    store: bool
    broker: bool

    @property
    def ready(self) -> bool:
        return self.store and self.broker

    def as_json(self) -> dict[str, object]:
        checks = {
            name: CHECK_OK if ok else CHECK_UNAVAILABLE for name, ok in (("store", self.store), ("broker", self.broker))
        }
        return {"ready": self.ready, "checks": checks}


async def check_readiness(forwarder: Forwarder | None) -> Readiness:
    """Check the store (one trivial query) and the broker link (its connected state)."""
    if forwarder is None:  # not started (or failed to)
        return Readiness(store=False, broker=False)
    return Readiness(store=await _store_answers(forwarder), broker=forwarder.broker.transport.connected)


async def _store_answers(forwarder: Forwarder) -> bool:
    try:
        await asyncio.wait_for(forwarder.runner.read(forwarder.store.ping), READY_STORE_TIMEOUT_S)
    except (TaskfabricError, TimeoutError, RuntimeError) as exc:
        log.warning("readiness: the store does not answer: %s", exc)
        return False
    return True


# operations routes, not API v1: outside the OpenAPI description (like /metrics)
health_router = APIRouter(include_in_schema=False)


@health_router.get("/healthz")
async def healthz() -> JSONResponse:
    """200 while the process serves HTTP (no authentication)."""
    return JSONResponse({"status": CHECK_OK})


@health_router.get("/readyz", responses={503: {"description": "the store or the broker is unavailable"}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the store and the broker are reachable, else 503 naming which is not."""
    readiness = await check_readiness(getattr(request.app.state, "forwarder", None))
    return JSONResponse(readiness.as_json(), status_code=200 if readiness.ready else 503)


# --- the client side: `taskfabric forwarder status` ------------------------------------------


def probe_forwarder(url: str, *, timeout_s: float = 10.0, ca_file: Path | None = None) -> dict[str, Any]:
    """Ask a forwarder's /healthz and /readyz: `{"url", "reachable", "alive", "ready", "checks"}`
    (`reachable` False: nothing answered at `url`; `error` then says why). `ca_file`: the private
    CA that signed an https forwarder's certificate (default: the system's trust store)."""
    base = url.rstrip("/")
    verify: ssl.SSLContext | bool = client_ssl_context(ca_file, key="--ca-file") if ca_file is not None else True
    try:
        with httpx.Client(timeout=timeout_s, verify=verify) as http:
            alive = http.get(f"{base}/healthz")
            ready = http.get(f"{base}/readyz")
    except httpx.HTTPError as exc:
        return {"url": base, "reachable": False, "alive": False, "ready": False, "checks": {}, "error": str(exc)}
    checks = _checks_of(ready)
    return {
        "url": base,
        "reachable": True,
        "alive": alive.status_code == 200,
        "ready": ready.status_code == 200 and bool(checks) and all(value == CHECK_OK for value in checks.values()),
        "checks": checks,
    }


def _checks_of(response: httpx.Response) -> dict[str, str]:
    try:
        body = response.json()
    except ValueError:
        return {}
    checks = body.get("checks") if isinstance(body, dict) else None
    if not isinstance(checks, dict):
        return {}
    return {str(name): str(value) for name, value in checks.items()}
