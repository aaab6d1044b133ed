"""Resource specifications: one check shared by the client and the forwarder, typed errors naming
the key, and what the worker exposes in a task's environment."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgpack
import pytest

from taskfabric.client.client import checked_resource_specification
from taskfabric.errors import InvalidRequest
from taskfabric.forwarder.batching import plan_task_batches
from taskfabric.forwarder.records import NewTask
from taskfabric.forwarder.requests import SubmitLimits, parse_submit_json, parse_submit_msgpack
from taskfabric.protocol import FunctionBody, check_resource_specification, resource_environment

LIMITS = SubmitLimits(max_tasks=5, max_payload_bytes=100)
F = str(uuid.uuid4())


def test_a_valid_specification_passes_as_plain_ints() -> None:
    assert check_resource_specification({"num_cores": 2, "num_gpus": 0, "memory_mb": 4096}) == {
        "num_cores": 2,
        "num_gpus": 0,
        "memory_mb": 4096,
    }
    assert check_resource_specification(None) == {}


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"num_core": 2}, "resource_specification.num_core: unknown key"),
        ({"num_cores": -1}, "resource_specification.num_cores: expected an integer"),
        ({"num_cores": 2.5}, "resource_specification.num_cores: expected an integer"),
        ({"num_cores": True}, "resource_specification.num_cores: expected an integer"),
        ({"num_cores": "2"}, "resource_specification.num_cores: expected an integer"),
        ({"memory_mb": 1 << 40}, "resource_specification.memory_mb: expected an integer"),
        ([2], "resource_specification: expected a map"),
    ],
)
def test_bad_specifications_name_the_key(spec: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        check_resource_specification(spec)
    with pytest.raises(InvalidRequest, match=named.replace(".", r"\.")):  # the client's typed error
        checked_resource_specification(spec)


def test_the_forwarder_refuses_a_bad_specification_naming_the_task_and_key() -> None:
    body = {
        "tasks": [
            {"function_id": F, "payload": b""},
            {"function_id": F, "payload": b"", "resource_specification": {"gpus": 1}},
        ]
    }
    with pytest.raises(InvalidRequest, match=r"tasks\[1\]\.resource_specification\.gpus: unknown key") as caught:
        parse_submit_msgpack(msgpack.packb(body, use_bin_type=True), LIMITS)
    assert caught.value.status == 400


def test_the_forwarder_carries_a_specification_into_the_task_message() -> None:
    body = {
        "tasks": [
            {"function_id": F, "payload": "", "resource_specification": {"num_cores": 4}},
            {"function_id": F, "payload": ""},
        ]
    }
    parsed = parse_submit_json(json.dumps(body).encode(), LIMITS)
    assert [task.resource_specification for task in parsed.tasks] == [{"num_cores": 4}, None]
    new = [
        NewTask(
            task_id=uuid.uuid4(),
            function_id=uuid.UUID(F),
            payload=b"",
            resource_specification=task.resource_specification,
        )
        for task in parsed.tasks
    ]
    bodies = {uuid.UUID(F): FunctionBody(function_id=uuid.UUID(F), body=b"f")}
    (batch,) = plan_task_batches(new, bodies, max_tasks=10, max_bytes=1 << 20)
    assert [task.resource_specification for task in batch.tasks] == [{"num_cores": 4}, {}]


def test_the_environment_of_a_specification() -> None:
    assert resource_environment({"num_cores": 2, "num_gpus": 1}) == {
        "TASKFABRIC_NUM_CORES": "2",
        "TASKFABRIC_NUM_GPUS": "1",
        "OMP_NUM_THREADS": "2",
    }
    assert resource_environment({"memory_mb": 100}) == {"TASKFABRIC_MEMORY_MB": "100"}
