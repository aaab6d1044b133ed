"""A task's resource specification: which keys exist and which values they take.

Checked at the client (before a task is queued) and at the forwarder (before it is accepted), so a
bad key or value is a typed error naming it, never a failure on the endpoint. Best effort on the
endpoint: the worker exposes the values in the task's environment (`TASKFABRIC_<KEY>`, and
`OMP_NUM_THREADS` for `num_cores`); it does not enforce them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_RESOURCE_VALUE", "RESOURCE_KEYS", "check_resource_specification", "resource_environment"]

#: key -> what it asks for
RESOURCE_KEYS: dict[str, str] = {
    "num_cores": "CPU cores the task may use (also sets OMP_NUM_THREADS)",
    "num_gpus": "GPUs the task may use",
    "memory_mb": "memory the task may use, in MiB",
}

#: the largest value any key accepts
MAX_RESOURCE_VALUE = 1 << 20


def check_resource_specification(spec: Any, *, field: str = "resource_specification") -> dict[str, int]:
    """The specification as a plain `{key: int}`; raises `ValueError` naming the bad key or value."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValueError(f"{field}: expected a map of {', '.join(RESOURCE_KEYS)} to integers")
    checked: dict[str, int] = {}
    for key, value in spec.items():
        if key not in RESOURCE_KEYS:
            shown = key[:64] if isinstance(key, str) else repr(key)[:64]
            raise ValueError(f"{field}.{shown}: unknown key; expected one of {', '.join(RESOURCE_KEYS)}")
        if type(value) is not int or not 0 <= value <= MAX_RESOURCE_VALUE:
            raise ValueError(f"{field}.{key}: expected an integer from 0 to {MAX_RESOURCE_VALUE}")
        checked[key] = value
    return checked


def resource_environment(spec: dict[str, int]) -> dict[str, str]:
    """The environment variables a worker sets for a task with this specification."""
    env = {f"TASKFABRIC_{key.upper()}": str(value) for key, value in spec.items() if key in RESOURCE_KEYS}
    if "num_cores" in spec:
        env["OMP_NUM_THREADS"] = str(spec["num_cores"])
    return env
