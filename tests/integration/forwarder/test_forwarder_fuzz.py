"""Fuzzing a real forwarder from its own OpenAPI description: no input may produce a 5xx.

Every operation gets schema-conforming (positive) and schema-violating (negative) cases from
schemathesis, sent with a valid token, some against ids that exist. Bounded: a few hundred
requests in total.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import hypothesis
import hypothesis.errors
import msgpack
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

from taskfabric.forwarder.testing import ForwarderApi

Users = Callable[[Any], ForwarderApi]

EXAMPLES_PER_RUN = 12


@schemathesis.serializer("application/msgpack")
def _msgpack(context: Any, value: Any) -> dict[str, Any]:
    """Submit bodies as msgpack, payload strings as the raw bytes the route expects."""
    if isinstance(value, dict) and isinstance(value.get("tasks"), list):
        for task in value["tasks"]:
            if isinstance(task, dict) and isinstance(task.get("payload"), str):
                task["payload"] = task["payload"].encode("utf-8", "surrogatepass")
    try:
        return {"data": msgpack.packb(value, use_bin_type=True)}
    except (OverflowError, TypeError, ValueError):  # e.g. integers msgpack cannot hold
        return {"data": msgpack.packb(repr(value), use_bin_type=True)}


def test_no_input_produces_a_server_error(sqlite_forwarder: Any, users: Users) -> None:
    alice = users(sqlite_forwarder)
    endpoint_id = alice.register_endpoint("fuzzed")["endpoint_id"]
    function_id = alice.register_function(b"fuzz" + uuid.uuid4().bytes)
    (task_id,) = alice.submit(endpoint_id, function_id, [b"p"])
    schema = schemathesis.openapi.from_url(f"{sqlite_forwarder.url}/openapi.json")
    session = requests.Session()
    headers = {"Authorization": f"Bearer {alice.token}"}
    known = {"endpoint_id": endpoint_id, "function_id": function_id, "task_id": task_id}
    failures: list[str] = []
    operations = exercised = 0
    statuses: list[int] = []

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in _path_choices(operation.path, known):
                strategy = operation.as_strategy(generation_mode=mode, headers=headers, path_parameters=path_parameters)

                @hypothesis.settings(
                    max_examples=EXAMPLES_PER_RUN,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @hypothesis.given(case=strategy)
                def run(case: Any) -> None:
                    response = case.call(base_url=sqlite_forwarder.url, session=session, timeout=30)
                    statuses.append(response.status_code)
                    if response.status_code >= 500:
                        failures.append(
                            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                        )

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    continue  # e.g. no way to violate the schema of an operation without inputs
                exercised += 1
    session.close()
    assert operations >= 13
    assert exercised >= 2 * operations
    print(f"{len(statuses)} requests:", {status: statuses.count(status) for status in sorted(set(statuses))})
    assert len(statuses) >= 250
    assert not failures, "\n".join(failures)


def _path_choices(path: str, known: dict[str, str]) -> list[dict[str, Any] | None]:
    """Generated path ids, and (for operations with one) the id of a resource that exists."""
    names = [name for name in known if "{" + name + "}" in path]
    if not names:
        return [None]
    return [None, {name: known[name] for name in names}]
