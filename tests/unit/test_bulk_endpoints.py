"""Bulk registration's parts that need no broker: the store's one-transaction insert and the
password hashes a definitions import carries (forwarder/testing/bulk_endpoints.py)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from pathlib import Path

import pytest

from taskfabric.broker_config import broker_username, new_queue_secret
from taskfabric.forwarder.records import EndpointRecord
from taskfabric.forwarder.store import Store, StoreConflict
from taskfabric.forwarder.testing.bulk_endpoints import _password_hash


def _record(owner_id: uuid.UUID, name: str) -> EndpointRecord:
    endpoint_id = uuid.uuid4()
    return EndpointRecord(
        endpoint_id=endpoint_id,
        owner_id=owner_id,
        name=name,
        queue_secret=new_queue_secret(),
        broker_username=broker_username(endpoint_id),
        created_at=time.time(),
        metadata="{}",
    )


def test_add_many_inserts_every_endpoint_or_none(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        owner = store.users.create("owner")
        records = [_record(owner.user_id, f"ep-{index}") for index in range(300)]
        store.endpoints.add_many(records)
        listed = {record.endpoint_id: record for record in store.endpoints.list(owner.user_id)}
        assert set(listed) == {record.endpoint_id for record in records}
        assert listed[records[7].endpoint_id].queue_secret == records[7].queue_secret
        clashing = [_record(owner.user_id, "fresh"), _record(owner.user_id, "ep-3")]  # ep-3 is taken
        with pytest.raises(StoreConflict):
            store.endpoints.add_many(clashing)
        assert store.endpoints.find(owner.user_id, "fresh") is None  # one transaction: none added
        store.endpoints.add_many([])


def test_password_hashes_are_rabbitmqs_salted_sha256() -> None:
    encoded = base64.b64decode(_password_hash("s3cret"))
    salt, digest = encoded[:4], encoded[4:]
    assert digest == hashlib.sha256(salt + b"s3cret").digest()
    assert _password_hash("s3cret") != _password_hash("s3cret")  # a fresh salt each time
