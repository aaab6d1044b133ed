"""The Executor's default for large arguments against a forwarder that names no URL for endpoints
(these test forwarders listen on port 0): the first upload's answer says so, and arguments then
travel inside their tasks, as they must for workers that could not fetch them. These forwarders
take task payloads of at most 256 KiB, so a 1.5 MiB argument inside its task is refused with a
413 naming the payload's size: the argument's own bytes, not a reference of a few hundred."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from taskfabric.client import Client, Executor, PayloadTooLarge
from taskfabric.forwarder.testing import ForwarderApi


def test_without_a_url_for_endpoints_large_arguments_ride_inside_their_tasks(
    sqlite_forwarder: Any, users: Callable[[Any], ForwarderApi]
) -> None:
    alice = users(sqlite_forwarder)
    endpoint_id = alice.register_endpoint("lab")["endpoint_id"]
    big = os.urandom(3 * 512 * 1024)  # above the default 1 MiB
    with Client(url=sqlite_forwarder.url, token=alice.token) as client:
        with Executor(endpoint_id, client=client) as executor:
            assert executor.by_reference_bytes == 1024 * 1024
            first = executor.submit(len, big)
            assert client.data_endpoint_url is None  # the upload's answer named no URL for workers
            assert executor.by_reference_bytes is None  # so this Executor stops passing references
            second = executor.submit(len, big)
            for future in (first, second):
                with pytest.raises(PayloadTooLarge, match=r"payload is 15728\d\d bytes"):
                    future.result(timeout=30)
        assert len(client._data_refs) == 1  # the one upload that found out
