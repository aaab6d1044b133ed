"""Typed settings: unknown keys, wrong types and out-of-range values are named, never defaulted."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from taskfabric.errors import ConfigError
from taskfabric.settings import describe_settings, load_settings, load_yaml, setting, settings_from_env


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    min_blocks: int = setting(0, help="blocks kept", min=0)
    walltime: str = setting("00:10:00", help="walltime")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = setting(help="the name")
    workers_per_node: int = setting(1, help="workers", min=1, max=1024)
    heartbeat_period_s: float = setting(2.0, help="period", min=0.1)
    mode: Literal["fast", "safe"] = setting("safe", help="mode")
    debug: bool = setting(False, help="debug")
    log_dir: Path | None = setting(None, help="where logs go")
    tags: list[str] = setting(default_factory=list, help="tags")
    provider: Inner = setting(default_factory=Inner, help="provider")

    def __post_init__(self) -> None:
        if self.mode == "fast" and self.debug:
            raise ValueError("debug is not available in fast mode")


def test_valid_settings_load_with_defaults() -> None:
    loaded = load_settings(
        Outer, {"name": "x", "heartbeat_period_s": 3, "provider": {"min_blocks": 2}, "log_dir": "~/logs"}
    )
    assert loaded.workers_per_node == 1
    assert loaded.heartbeat_period_s == 3.0
    assert loaded.provider == Inner(min_blocks=2)
    assert loaded.log_dir == Path("~/logs").expanduser()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "workers_per_nod": 2}, r"workers_per_nod: unknown key \(did you mean 'workers_per_node'\?\)"),
        ({}, "name: is required"),
        ({"name": "x", "workers_per_node": "4"}, "workers_per_node: expected an integer, got '4'"),
        ({"name": "x", "workers_per_node": True}, "workers_per_node: expected an integer"),
        ({"name": "x", "workers_per_node": 0}, "workers_per_node: must be at least 1, got 0"),
        ({"name": "x", "workers_per_node": 5000}, "workers_per_node: must be at most 1024"),
        ({"name": "x", "mode": "turbo"}, "mode: expected one of 'fast', 'safe'"),
        ({"name": "x", "debug": "yes"}, "debug: expected true or false"),
        ({"name": "x", "tags": "a"}, "tags: expected a list"),
        ({"name": "x", "tags": ["a", 3]}, r"tags\[1\]: expected a string"),
        ({"name": "x", "provider": {"max_blocks": 3}}, "provider.max_blocks: unknown key"),
        ({"name": "x", "provider": {"min_blocks": -1}}, "provider.min_blocks: must be at least 0"),
        ({"name": "x", "mode": "fast", "debug": True}, "debug is not available in fast mode"),
    ],
)
def test_bad_settings_name_the_key_and_source(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(Outer, data, source="config.yaml")
    assert "config.yaml" in str(caught.value)


def test_yaml_loading(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nworkers_per_node: 4\n")
    assert load_settings(Outer, load_yaml(path)).workers_per_node == 4
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_environment_values_are_parsed_as_yaml_scalars() -> None:
    found = settings_from_env(Outer, "TF_", {"TF_WORKERS_PER_NODE": "8", "TF_NAME": "n", "OTHER": "1"})
    assert found == {"workers_per_node": 8, "name": "n"}


def test_describe_lists_every_key() -> None:
    keys = {doc.key: doc for doc in describe_settings(Outer)}
    assert set(keys) == {
        "name",
        "workers_per_node",
        "heartbeat_period_s",
        "mode",
        "debug",
        "log_dir",
        "tags",
        "provider.min_blocks",
        "provider.walltime",
    }
    assert keys["workers_per_node"].default == "1"
    assert keys["name"].default == "(required)"
    assert keys["mode"].type == "'fast' | 'safe'"
