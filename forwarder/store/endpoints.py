"""Registered endpoints: owner, name, queue secret, broker user and the last status report."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Row, bindparam, select

from taskfabric.forwarder.records import EndpointRecord, StatusReport
from taskfabric.forwarder.store._sql import clean_text
from taskfabric.forwarder.store.access import parse_allowed_functions
from taskfabric.forwarder.store.engine import translate_errors
from taskfabric.forwarder.store.schema import endpoints
from taskfabric.protocol import MAX_BLOCK_REPORTS, BlockReport

__all__ = ["EndpointTable"]

_TEXT_LIMIT = 256
_STATUS_COUNTERS = ("managers", "workers", "idle_workers", "outstanding_tasks", "pending_blocks", "running_blocks")
_STATUS_TEXTS = ("hostname", "python_version", "agent_version", "status_reason")
#: a scaling decision may quote a scheduler's message
_SCALING_LIMIT = 1024
#: block and job ids are short (`0`, `12345.cluster`)
_ID_LIMIT = 128
#: counters are clamped into a signed 32-bit column
_COUNTER_MAX = 2**31 - 1


class EndpointTable:
    """Reads and writes of `endpoints`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: EndpointRecord) -> None:
        """Insert a new endpoint; `StoreConflict` if the owner already has one by that name (or id)."""
        now = time.time()
        with translate_errors("registering an endpoint"), self._engine.begin() as connection:
            connection.execute(
                endpoints.insert().values(
                    endpoint_id=record.endpoint_id,
                    owner_id=record.owner_id,
                    name=record.name,
                    queue_secret=record.queue_secret,
                    broker_username=record.broker_username,
                    metadata=record.metadata,
                    created_at=record.created_at,
                    registered_at=now,
                )
            )

    def add_many(self, records: Sequence[EndpointRecord]) -> None:
        """Insert many new endpoints in one transaction (bulk registration for benchmarks,
        forwarder/testing/bulk_endpoints.py; `StoreConflict` if any clashes, none is then added)."""
        now = time.time()
        rows = [
            {
                "endpoint_id": record.endpoint_id,
                "owner_id": record.owner_id,
                "name": record.name,
                "queue_secret": record.queue_secret,
                "broker_username": record.broker_username,
                "metadata": record.metadata,
                "created_at": record.created_at,
                "registered_at": now,
            }
            for record in records
        ]
        if not rows:
            return
        with translate_errors("registering endpoints in bulk"), self._engine.begin() as connection:
            connection.execute(endpoints.insert(), rows)

    def update_registration(self, endpoint_id: uuid.UUID, *, name: str, metadata: str) -> None:
        """A re-registration: new name and metadata (`StoreConflict` if the name is taken)."""
        with translate_errors("re-registering an endpoint"), self._engine.begin() as connection:
            connection.execute(
                endpoints.update()
                .where(endpoints.c.endpoint_id == endpoint_id)
                .values(name=name, metadata=metadata, registered_at=time.time())
            )

    def mark_queue_rebuilt(self, endpoint_id: uuid.UUID, *, at: float) -> None:
        """Remember that the endpoint's task queue was rebuilt (see forwarder/queue_health.py)."""
        with translate_errors("recording a queue rebuild"), self._engine.begin() as connection:
            connection.execute(
                endpoints.update().where(endpoints.c.endpoint_id == endpoint_id).values(queue_rebuilt_at=at)
            )

    def get(self, endpoint_id: uuid.UUID) -> EndpointRecord | None:
        with translate_errors("reading an endpoint"), self._engine.connect() as connection:
            row = connection.execute(select(endpoints).where(endpoints.c.endpoint_id == endpoint_id)).first()
        return _endpoint(row) if row is not None else None

    def find(self, owner_id: uuid.UUID, name: str) -> EndpointRecord | None:
        query = select(endpoints).where(endpoints.c.owner_id == owner_id, endpoints.c.name == name)
        with translate_errors("looking up an endpoint"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        return _endpoint(row) if row is not None else None

    def list(self, owner_id: uuid.UUID | None = None) -> list[EndpointRecord]:
        """The owner's endpoints, or every endpoint (for the result consumers)."""
        query = select(endpoints).order_by(endpoints.c.created_at)
        if owner_id is not None:
            query = query.where(endpoints.c.owner_id == owner_id)
        with translate_errors("listing endpoints"), self._engine.connect() as connection:
            return [_endpoint(row) for row in connection.execute(query)]

    def delete(self, endpoint_id: uuid.UUID) -> bool:
        with translate_errors("deleting an endpoint"), self._engine.begin() as connection:
            deleted = connection.execute(endpoints.delete().where(endpoints.c.endpoint_id == endpoint_id))
        return bool(deleted.rowcount)

    def record_statuses(self, reports: Sequence[tuple[uuid.UUID, StatusReport]]) -> None:
        """Write the latest status report of several endpoints (one statement)."""
        if not reports:
            return
        statement = (
            endpoints.update()
            .where(endpoints.c.endpoint_id == bindparam("b_endpoint_id"))
            .values(
                state=bindparam("b_state"),
                last_heartbeat_at=bindparam("b_last_heartbeat_at"),
                scaling=bindparam("b_scaling"),
                blocks=bindparam("b_blocks"),
                **{name: bindparam(f"b_{name}") for name in (*_STATUS_COUNTERS, *_STATUS_TEXTS)},
            )
        )
        rows = [_status_params(endpoint_id, report) for endpoint_id, report in reports]
        with translate_errors("recording endpoint status"), self._engine.begin() as connection:
            connection.execute(statement, rows)


def _status_params(endpoint_id: uuid.UUID, report: StatusReport) -> dict[str, Any]:
    params: dict[str, Any] = {
        "b_endpoint_id": endpoint_id,
        "b_state": report.state,
        "b_last_heartbeat_at": report.last_heartbeat_at,
    }
    for name in _STATUS_COUNTERS:
        params[f"b_{name}"] = max(0, min(_COUNTER_MAX, getattr(report, name)))
    for name in _STATUS_TEXTS:
        params[f"b_{name}"] = clean_text(getattr(report, name), _TEXT_LIMIT)
    params["b_scaling"] = clean_text(report.scaling, _SCALING_LIMIT)
    params["b_blocks"] = _blocks_json(report.blocks)
    return params


def _blocks_json(blocks: Sequence[BlockReport]) -> str:
    """The reported blocks as a JSON list of [block id, job id, state, submitted at], each text
    clipped (an agent's report is untrusted input)."""
    rows = [
        [clean_text(b.block_id, _ID_LIMIT), clean_text(b.job_id, _ID_LIMIT), clean_text(b.state, 16), b.submitted_at]
        for b in blocks[:MAX_BLOCK_REPORTS]
        if math.isfinite(b.submitted_at)
    ]
    return json.dumps(rows, separators=(",", ":"))


def _blocks_of(text: str | None) -> tuple[BlockReport, ...]:
    """The blocks `_blocks_json` wrote (none for older rows, or text that is not what it wrote)."""
    try:
        rows = json.loads(text or "[]")
        return tuple(
            BlockReport(block_id=str(row[0]), job_id=str(row[1]), state=str(row[2]), submitted_at=float(row[3]))
            for row in rows
        )
    except (ValueError, TypeError, IndexError):
        return ()


def _endpoint(row: Row[Any]) -> EndpointRecord:
    m = row._mapping
    status = StatusReport(
        state=m["state"],
        last_heartbeat_at=m["last_heartbeat_at"],
        managers=m["managers"] or 0,
        workers=m["workers"] or 0,
        idle_workers=m["idle_workers"] or 0,
        outstanding_tasks=m["outstanding_tasks"] or 0,
        pending_blocks=m["pending_blocks"] or 0,
        running_blocks=m["running_blocks"] or 0,
        hostname=m["hostname"] or "",
        python_version=m["python_version"] or "",
        agent_version=m["agent_version"] or "",
        scaling=m["scaling"] or "",
        status_reason=m["status_reason"] or "",
        blocks=_blocks_of(m["blocks"]),
    )
    return EndpointRecord(
        endpoint_id=m["endpoint_id"],
        owner_id=m["owner_id"],
        name=m["name"],
        queue_secret=m["queue_secret"],
        broker_username=m["broker_username"],
        created_at=m["created_at"],
        metadata=m["metadata"],
        status=status,
        allowed_functions=parse_allowed_functions(m.get("allowed_functions")),
    )
