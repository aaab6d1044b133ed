"""The endpoint config file: defaults, validation naming the key, derived values."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.errors import ConfigError


def test_defaults() -> None:
    config = EndpointConfig()
    assert config.max_retries_on_system_failure == 1
    assert config.max_result_bytes == 10 * 1024 * 1024
    assert config.provider == {"type": "LocalProvider"}
    assert config.workers_per_node == 1


def test_prefetch_default_depends_on_how_many_managers_can_run() -> None:
    def config(**values: object) -> EndpointConfig:
        return EndpointConfig.from_mapping({"scaling": {"workers_per_node": values.pop("workers")}, **values})

    assert config(workers=2).effective_prefetch(max_managers=1) == 128
    assert config(workers=2).effective_prefetch(max_managers=4) == 0
    assert config(workers=32).effective_prefetch(max_managers=1) == 256
    assert config(workers=2, prefetch=3).effective_prefetch(max_managers=4) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prefetc: 4\n", r"prefetc: unknown key \(did you mean 'prefetch'\?\)"),
        ("scaling:\n  workers_per_node: 0\n", "scaling.workers_per_node: must be at least 1"),
        ("scaling:\n  workers_per_node: two\n", "scaling.workers_per_node: expected an integer"),
        ("provider:\n  type: SlurmProvidr\n", "SlurmProvider"),
        ("provider:\n  max_blockz: 2\n", "provider.max_blockz"),
        ("container:\n  container_type: docker\n", "container"),
        ("max_retries_on_system_failure: -1\n", "max_retries_on_system_failure: must be at least 0"),
        ("heartbeat_period_s: 10\nheartbeat_threshold_s: 15\n", "must be at least twice heartbeat_period_s"),
        ("log_level: LOUD\n", "log_level must be DEBUG, INFO, WARNING or ERROR"),
        ("provider: LocalProvider\n", "provider: expected a mapping"),
        ("- 1\n", "top level must be a mapping"),
        ("allowed_functions:\n  - not-an-id\n", r"allowed_functions\[0\]: 'not-an-id' is not a function id"),
        ("allowed_functions: some\n", "allowed_functions: expected"),
    ],
)
def test_bad_config_names_the_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        EndpointConfig.from_file(path)
    assert str(path) in str(caught.value)


def test_the_allow_list_is_a_set_of_function_ids() -> None:
    import uuid

    function_id = uuid.uuid4()
    config = EndpointConfig.from_mapping({"allowed_functions": [str(function_id), str(function_id).upper()]})
    assert config.allowed_function_ids == frozenset({function_id})
    assert EndpointConfig().allowed_function_ids is None
    assert EndpointConfig.from_mapping({"allowed_functions": []}).allowed_function_ids == frozenset()


def test_a_full_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "display_name: lab\nscaling:\n  workers_per_node: 4\nprefetch: 2\nmax_retries_on_system_failure: 3\n"
        "heartbeat_period_s: 2\nheartbeat_threshold_s: 10\nprovider:\n  type: LocalProvider\n  init_blocks: 1\n"
    )
    config = EndpointConfig.from_file(path)
    assert config.display_name == "lab"
    assert config.effective_prefetch(1) == 2
    assert config.provider["init_blocks"] == 1


def test_every_key_is_documented_for_endpoint_owners() -> None:
    from taskfabric.settings import describe_settings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "endpoint-owner.md").read_text()
    for setting_doc in describe_settings(EndpointConfig):
        assert f"`{setting_doc.key}`" in doc, f"{setting_doc.key} is missing from docs/endpoint-owner.md"


def test_the_cancel_grace_period_is_a_setting() -> None:
    assert EndpointConfig().cancel_grace_period_s == 10.0
    assert EndpointConfig.from_mapping({"cancel_grace_period_s": 2.5}).cancel_grace_period_s == 2.5
    with pytest.raises(ConfigError, match="cancel_grace_period_s"):
        EndpointConfig.from_mapping({"cancel_grace_period_s": -1})


def test_a_connection_file_from_before_the_control_queue_still_loads(tmp_path: Path) -> None:
    import json
    import uuid

    from taskfabric.endpoint_agent.connection import EndpointConnection

    old = {
        "endpoint_id": str(uuid.uuid4()),
        "amqp_url": "amqp://ep:secret@127.0.0.1:5672/%2F",
        "username": "ep",
        "task_queue": "taskfabric.tasks.x",
        "result_queue": "taskfabric.results.x",
        "results_exchange": "taskfabric.results",
        "dead_letter_exchange": "taskfabric.dead-letter",
        "status_period_s": 5.0,
    }
    path = tmp_path / "connection.json"
    path.write_text(json.dumps(old))
    loaded = EndpointConnection.load(path)
    assert loaded.control_queue is None
    assert loaded.task_queue == "taskfabric.tasks.x"
    fresh = EndpointConnection.from_registration(
        {"endpoint_id": old["endpoint_id"], "name": "x", "broker": {**old, "control_queue": "taskfabric.control.x"}}
    )
    fresh.save(path)
    assert EndpointConnection.load(path).control_queue == "taskfabric.control.x"
