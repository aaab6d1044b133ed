"""The Executor's memory of functions (no service needed: nothing here is sent): serialized once
per function object, shared by identical bodies, forgotten when the function dies, bounded."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskfabric.client import Client, Executor, InvalidRequest, NotFoundError
from taskfabric.client import executor as executor_module


@pytest.fixture
def executor() -> Iterator[Executor]:
    # a service that is never reached: these tests submit nothing
    with Client(url="http://127.0.0.1:9", token="tf_unused") as client:
        ex = Executor(uuid.uuid4(), client=client)
        yield ex
        ex.shutdown(wait=False)


def test_identical_bodies_share_one_function_and_dead_functions_are_forgotten(executor: Executor) -> None:
    def make() -> Callable[[int], int]:
        return lambda x: x + 1

    first, second = make(), make()  # two function objects, one body
    assert executor._function_of(first) is executor._function_of(second)
    assert executor._function_of(first) is executor._function_of(first)
    assert len(executor._functions) == 2
    del first, second
    gc.collect()
    assert executor._functions == {}


def test_remembered_bodies_are_bounded(executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "_BODY_CACHE_BYTES", 1000)
    for index in range(50):
        executor._remember_body(bytes([index]) * 100, f"f{index}")
    assert executor._bodies_bytes <= 1000
    assert len(executor._bodies) == 10
    assert executor._bodies_bytes == sum(len(function.body) for function in executor._bodies.values())


def test_chunks_of_calls() -> None:
    chunks = list(executor_module._chunks((range(5), "abcde"), 2))
    assert chunks == [((0, "a"), (1, "b")), ((2, "c"), (3, "d")), ((4, "e"),)]
    assert executor_module._chunk_runner(lambda n, s: s * n)(chunks[1]) == ["cc", "ddd"]


class _Endpoints:
    """The one call `resolve_endpoint` makes, answered from a list."""

    def __init__(self, *entries: dict[str, str]) -> None:
        self.entries = list(entries)

    def list_endpoints(self) -> list[dict[str, str]]:
        return self.entries


def test_an_endpoint_is_found_by_id_or_by_a_unique_name() -> None:
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    client: Any = _Endpoints({"id": one, "name": "local"}, {"id": two, "name": "cluster"})
    assert executor_module.resolve_endpoint(client, "cluster") == uuid.UUID(two)
    assert executor_module.resolve_endpoint(client, one.upper()) == uuid.UUID(one)
    with pytest.raises(NotFoundError, match="no endpoint named 'gpu'"):
        executor_module.resolve_endpoint(client, "gpu")
    client.entries.append({"id": str(uuid.uuid4()), "name": "local"})  # e.g. one shared with you
    with pytest.raises(InvalidRequest, match=r"ambiguous.*give an endpoint id"):
        executor_module.resolve_endpoint(client, "local")


def test_your_own_endpoint_s_name_wins_over_shared_ones() -> None:
    mine, alices, bobs = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    client: Any = _Endpoints(
        {"id": mine, "name": "lab", "role": "owner"},
        {"id": alices, "name": "lab", "role": "submit", "owner": "alice"},
        {"id": bobs, "name": "gpu", "role": "manage", "owner": "bob"},
    )
    assert executor_module.resolve_endpoint(client, "lab") == uuid.UUID(mine)
    assert executor_module.resolve_endpoint(client, "gpu") == uuid.UUID(bobs)  # only a shared one has it
    client.entries.append({"id": str(uuid.uuid4()), "name": "gpu", "role": "submit", "owner": "carol"})
    with pytest.raises(InvalidRequest, match=r"ambiguous"):
        executor_module.resolve_endpoint(client, "gpu")
