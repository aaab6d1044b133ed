"""The provider/launcher factory: eager validation with key paths, creation, and the block command."""

from __future__ import annotations

import importlib.util
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider

from taskfabric.endpoint_agent.block_types import BlockSpec
from taskfabric.endpoint_agent.containers import BWRAP_TEMPLATE, ContainerSettings
from taskfabric.endpoint_agent.providers import (
    LAUNCHER_TYPES,
    PROVIDER_TYPES,
    LauncherSpec,
    build_provider,
    load_block_config,
    parse_provider_config,
    render_block_command,
)
from taskfabric.errors import ConfigError

BRIEF_EXAMPLE = """
provider:
  type: SlurmProvider
  partition: debug
  nodes_per_block: 1
  init_blocks: 0
  min_blocks: 0
  max_blocks: 2
  walltime: "00:10:00"
  worker_init: "source ~/venv/bin/activate"
  exclusive: false
  launcher:
    type: SrunLauncher
"""

SCHEDULER_PROVIDERS = [
    "LocalProvider",
    "SlurmProvider",
    "PBSProProvider",
    "TorqueProvider",
    "LSFProvider",
    "GridEngineProvider",
    "CondorProvider",
]


def bad(data: dict[str, Any] | None, source: str = "/etc/ep/config.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_provider_config(data, source=source)
    assert str(caught.value).endswith(f"in {source}"), "the message names the file"
    return caught.value


# --- parsing ------------------------------------------------------------------------------


def test_no_provider_section_means_a_local_provider_with_parsl_defaults() -> None:
    spec = parse_provider_config(None)
    assert spec.type == "LocalProvider"
    assert spec.launcher is None
    assert spec.block == BlockSpec(nodes_per_block=1, init_blocks=1, min_blocks=0, max_blocks=1, walltime=None)


def test_the_slurm_example_parses_with_its_block_shape() -> None:
    spec = parse_provider_config(yaml.safe_load(BRIEF_EXAMPLE)["provider"], source="ep.yaml")
    assert spec.type == "SlurmProvider"
    assert spec.launcher == LauncherSpec("SrunLauncher", {})
    assert spec.options["partition"] == "debug"
    assert spec.options["exclusive"] is False
    assert "launcher" not in spec.options and "type" not in spec.options
    assert spec.block == BlockSpec(
        nodes_per_block=1,
        init_blocks=0,
        min_blocks=0,
        max_blocks=2,
        parallelism=1.0,
        walltime="00:10:00",
        worker_init="source ~/venv/bin/activate",
    )
    assert spec.block.walltime_s == 600
    assert (spec.source, spec.key) == ("ep.yaml", "provider")


def test_every_parsl_provider_and_launcher_is_known() -> None:
    for name in [*SCHEDULER_PROVIDERS, "KubernetesProvider", "AWSProvider", "GoogleCloudProvider", "AzureProvider"]:
        assert name in PROVIDER_TYPES
    for name in ["SimpleLauncher", "SingleNodeLauncher", "SrunLauncher", "MpiExecLauncher", "JsrunLauncher"]:
        assert name in LAUNCHER_TYPES


@pytest.mark.parametrize("name", SCHEDULER_PROVIDERS)
def test_each_scheduler_provider_parses_with_defaults_only(name: str) -> None:
    spec = parse_provider_config({"type": name})
    assert spec.type == name
    assert spec.block.max_blocks >= spec.block.min_blocks


def test_kubernetes_keys_are_checked_without_the_kubernetes_package() -> None:
    spec = parse_provider_config({"type": "KubernetesProvider", "image": "img", "persistent_volumes": [["c", "/d"]]})
    assert spec.options["persistent_volumes"] == [("c", "/d")]  # YAML lists become the tuples Parsl wants
    assert spec.block.walltime is None
    assert bad({"type": "KubernetesProvider"}).key == "provider.image"
    assert bad({"type": "KubernetesProvider", "image": "i", "imagee": "j"}).key == "provider.imagee"


def test_launcher_shorthand_and_options() -> None:
    assert parse_provider_config({"type": "SlurmProvider", "launcher": "SrunLauncher"}).launcher == LauncherSpec(
        "SrunLauncher", {}
    )
    spec = parse_provider_config({"type": "SlurmProvider", "launcher": {"type": "SrunLauncher", "overrides": "-K"}})
    assert spec.launcher == LauncherSpec("SrunLauncher", {"overrides": "-K"})


def test_unannotated_providers_get_types_from_known_keys() -> None:
    spec = parse_provider_config({"type": "PBSProProvider", "parallelism": 0.5, "account": "abc", "cpus_per_node": 8})
    assert spec.block.parallelism == 0.5
    assert bad({"type": "PBSProProvider", "cpus_per_node": "8"}).key == "provider.cpus_per_node"
    assert bad({"type": "TorqueProvider", "account": 42}).key == "provider.account"


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"type": "slurm"}, "provider.type", "did you mean 'SlurmProvider'"),
        ({"type": "SlurmProvidr"}, "provider.type", "did you mean 'SlurmProvider'"),
        ({"type": "pbs"}, "provider.type", "did you mean 'PBSProProvider'"),
        ({"type": 3}, "provider.type", "unknown provider type"),
        ({"type": "SlurmProvider", "max_blockz": 3}, "provider.max_blockz", "did you mean 'max_blocks'"),
        ({"type": "LocalProvider", "walltime": "00:10:00"}, "provider.walltime", "unknown key for LocalProvider"),
        ({"type": "SlurmProvider", "max_blocks": "3"}, "provider.max_blocks", "expected an integer, got '3'"),
        ({"type": "SlurmProvider", "max_blocks": True}, "provider.max_blocks", "expected an integer"),
        ({"type": "SlurmProvider", "exclusive": "no"}, "provider.exclusive", "expected true or false"),
        ({"type": "SlurmProvider", "partition": ["a"]}, "provider.partition", "expected a string or null"),
        ({"type": "SlurmProvider", "parallelism": "all"}, "provider.parallelism", "expected a number"),
        (
            {"type": "CondorProvider", "environment": {"A": 1}},
            "provider.environment",
            "a mapping (of a string to a string)",
        ),
        ({"type": "CondorProvider", "transfer_input_files": "a.txt"}, "provider.transfer_input_files", "a list"),
        ({"type": "SlurmProvider", "walltime": 600}, "provider.walltime", 'write walltime: "00:10:00"'),
        ({"type": "SlurmProvider", "walltime": "10m"}, "provider.walltime", 'expected "HH:MM:SS"'),
        ({"type": "SlurmProvider", "walltime": "00:00:30"}, "provider.walltime", "at least one minute"),
        ({"type": "SlurmProvider", "min_blocks": 3, "max_blocks": 2}, "provider.min_blocks", "more than max_blocks"),
        ({"type": "SlurmProvider", "init_blocks": 3, "max_blocks": 2}, "provider.init_blocks", "more than max_blocks"),
        ({"type": "SlurmProvider", "max_blocks": -1, "min_blocks": -2}, "provider.min_blocks", "negative"),
        ({"type": "SlurmProvider", "nodes_per_block": 0}, "provider.nodes_per_block", "at least 1"),
        ({"type": "SlurmProvider", "parallelism": 1.5}, "provider.parallelism", "between 0 and 1"),
        ({"type": "SlurmProvider", "launcher": {"overrides": "x"}}, "provider.launcher.type", "is required"),
        ({"type": "SlurmProvider", "launcher": "Srun"}, "provider.launcher.type", "did you mean 'SrunLauncher'"),
        ({"type": "SlurmProvider", "launcher": 7}, "provider.launcher", "expected a mapping with a type"),
        (
            {"type": "SlurmProvider", "launcher": {"type": "SrunLauncher", "overide": "-K"}},
            "provider.launcher.overide",
            "did you mean 'overrides'",
        ),
        (
            {"type": "LocalProvider", "launcher": {"type": "WrappedLauncher"}},
            "provider.launcher.prepend",
            "is required",
        ),
        (
            {"type": "SlurmProvider", "launcher": {"type": "SrunLauncher", "debug": "yes"}},
            "provider.launcher.debug",
            "expected true or false",
        ),
    ],
)
def test_mistakes_are_config_errors_naming_the_key_path(data: dict[str, Any], key: str, words: str) -> None:
    error = bad(data)
    assert error.key == key
    assert words in str(error)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"type": "SlurmProvider", "mem_per_node": -4}, "provider.mem_per_node"),
        ({"type": "SlurmProvider", "cores_per_node": -1}, "provider.cores_per_node"),
        ({"type": "SlurmProvider", "cores_per_node": 0}, "provider.cores_per_node"),
        ({"type": "SlurmProvider", "gpus_per_node": -2}, "provider.gpus_per_node"),
        ({"type": "SlurmProvider", "cmd_timeout": -10}, "provider.cmd_timeout"),
        ({"type": "PBSProProvider", "cpus_per_node": -1}, "provider.cpus_per_node"),
        ({"type": "LSFProvider", "cores_per_block": -8}, "provider.cores_per_block"),
        ({"type": "CondorProvider", "mem_per_slot": -1}, "provider.mem_per_slot"),
        ({"type": "CondorProvider", "cores_per_slot": 0}, "provider.cores_per_slot"),
    ],
)
def test_negative_or_zero_provider_sizes_are_refused_naming_the_key(data: dict[str, Any], key: str) -> None:
    error = bad(data)
    assert error.key == key
    assert "must be" in str(error)


def test_zero_memory_and_gpus_are_allowed() -> None:
    """Slurm reads --mem=0 as "all the node's memory"; no GPUs is the default."""
    spec = parse_provider_config({"type": "SlurmProvider", "mem_per_node": 0, "gpus_per_node": 0})
    assert spec.options["mem_per_node"] == 0


def test_the_section_must_be_a_mapping() -> None:
    assert bad(["SlurmProvider"]).key == "provider"  # type: ignore[arg-type]


# --- building -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULER_PROVIDERS)
def test_each_scheduler_provider_is_built_with_its_script_dir(name: str, tmp_path: Path) -> None:
    provider = build_provider(parse_provider_config({"type": name}), script_dir=tmp_path / "scripts")
    assert type(provider).__name__ == name
    assert provider.script_dir == str(tmp_path / "scripts")
    assert (tmp_path / "scripts").is_dir()


def test_the_launcher_and_options_reach_the_provider(tmp_path: Path) -> None:
    spec = parse_provider_config(yaml.safe_load(BRIEF_EXAMPLE)["provider"])
    provider = build_provider(spec, script_dir=tmp_path)
    assert isinstance(provider, SlurmProvider)
    assert isinstance(provider.launcher, SrunLauncher)
    assert provider.max_blocks == 2
    assert provider.partition == "debug"
    assert provider.exclusive is False


def test_a_local_provider_keeps_its_default_launcher(tmp_path: Path) -> None:
    provider = build_provider(parse_provider_config(None), script_dir=tmp_path)
    assert isinstance(provider, LocalProvider)
    assert isinstance(provider.launcher, SingleNodeLauncher)


def test_slurm_without_accounting_reads_final_states(tmp_path: Path) -> None:
    # no Slurm configured in unit tests: sacct fails and SlurmProvider falls back to squeue
    provider = build_provider(parse_provider_config({"type": "SlurmProvider"}), script_dir=tmp_path)
    command = provider._cmd  # type: ignore[attr-defined]
    if command.startswith("squeue"):
        assert "--states=all" in command
        assert command.count("--states") == 1


def test_kubernetes_without_its_package_is_a_clear_config_error(tmp_path: Path) -> None:
    spec = parse_provider_config({"type": "KubernetesProvider", "image": "img"}, source="k8s.yaml")
    with pytest.raises(ConfigError) as caught:
        build_provider(spec, script_dir=tmp_path)
    if importlib.util.find_spec("kubernetes") is None:
        assert "pip install kubernetes" in str(caught.value)
        assert caught.value.key == "provider.type"
    else:  # installed, but no kube config on a test machine
        assert "could not create KubernetesProvider" in str(caught.value)
    assert caught.value.source == "k8s.yaml"


# --- the endpoint config sections ---------------------------------------------------------


def test_block_config_reads_its_three_sections_and_leaves_the_rest() -> None:
    data = {
        "display_name": "the agent's own key",
        "provider": {"type": "LocalProvider", "max_blocks": 2},
        "container": {"container_type": "custom", "container_cmd_options": BWRAP_TEMPLATE},
        "scaling": {"workers_per_node": 3, "max_idle_time_s": 5},
    }
    config = load_block_config(data, source="ep.yaml")
    assert config.provider.block.max_blocks == 2
    assert config.container.container_type == "custom"
    assert config.scaling.workers_per_node == 3
    assert config.scaling.max_idle_time_s == 5.0


def test_block_config_defaults() -> None:
    config = load_block_config({})
    assert config.provider.type == "LocalProvider"
    assert not config.container.enabled
    assert config.scaling.workers_per_node == 1


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"scaling": {"workers_per_node": 0}}, "scaling.workers_per_node"),
        ({"scaling": {"max_idle_time": 5}}, "scaling.max_idle_time"),
        ({"container": {"container_type": "docker"}}, "container.container_uri"),
        ({"provider": {"type": "LocalProvider", "max_blockz": 1}}, "provider.max_blockz"),
        (
            {
                "provider": {"type": "KubernetesProvider", "image": "i"},
                "container": {"container_type": "docker", "container_uri": "i"},
            },
            "container.container_type",
        ),
    ],
)
def test_block_config_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_block_config(data, source="ep.yaml")
    assert key in str(caught.value)
    assert str(caught.value).endswith("in ep.yaml")


# --- the block command --------------------------------------------------------------------

MANAGER = [
    "taskfabric",
    "manager",
    "run",
    "--interchange",
    "tcp://10.1.2.3:55001",
    "--workers",
    "4",
    "--block-id",
    "b-0",
]


def test_the_block_command_is_the_quoted_manager_command() -> None:
    command = render_block_command(MANAGER, rundir="/r")
    assert shlex.split(command) == MANAGER
    assert render_block_command("already quoted words", rundir="/r") == "already quoted words"


def test_the_block_command_runs_in_the_container() -> None:
    container = ContainerSettings(container_type="apptainer", container_uri="/img/w.sif")
    command = render_block_command(MANAGER, rundir="/r", container=container)
    assert shlex.split(command) == ["apptainer", "run", "/img/w.sif", *MANAGER]


def test_the_block_command_never_repeats_worker_init() -> None:
    spec = parse_provider_config({"type": "SlurmProvider", "worker_init": "module load python"})
    command = render_block_command(MANAGER, rundir="/r", container=ContainerSettings())
    assert spec.block.worker_init not in command  # the provider writes it into the job script


# --- examples and docs --------------------------------------------------------------------

EXAMPLES = resources.files("taskfabric.endpoint_agent") / "examples"
EXPECTED_EXAMPLES = {
    "local": "LocalProvider",
    "slurm": "SlurmProvider",
    "slurm-apptainer": "SlurmProvider",
    "pbspro": "PBSProProvider",
    "torque": "TorqueProvider",
    "lsf": "LSFProvider",
    "gridengine": "GridEngineProvider",
    "condor": "CondorProvider",
    "kubernetes": "KubernetesProvider",
    "bwrap": "LocalProvider",
}
DOC = Path(__file__).resolve().parents[2] / "docs" / "endpoint-providers.md"


def example_files() -> list[str]:
    return sorted(entry.name for entry in EXAMPLES.iterdir() if entry.name.endswith(".yaml"))


def test_there_is_one_example_per_scheduler() -> None:
    assert {name.removesuffix(".yaml") for name in example_files()} == set(EXPECTED_EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXPECTED_EXAMPLES))
def test_each_example_validates(name: str, tmp_path: Path) -> None:
    text = (EXAMPLES / f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    assert set(data) <= {"provider", "container", "scaling"}
    config = load_block_config(data, source=f"{name}.yaml")
    assert config.provider.type == EXPECTED_EXAMPLES[name]
    if config.provider.type == "KubernetesProvider" and importlib.util.find_spec("kubernetes") is None:
        return  # keys validated above; creating it needs the optional package (tested separately)
    if config.provider.type != "KubernetesProvider":
        provider = build_provider(config.provider, script_dir=tmp_path)
        assert provider.max_blocks == config.provider.block.max_blocks


def test_the_bwrap_example_is_the_shipped_template() -> None:
    config = load_block_config(yaml.safe_load((EXAMPLES / "bwrap.yaml").read_text()))
    assert config.container.container_cmd_options.split() == BWRAP_TEMPLATE.split()


def test_the_docs_describe_every_key_of_every_supported_provider_and_launcher() -> None:
    import inspect

    import parsl.providers

    text = DOC.read_text()
    for name in [*SCHEDULER_PROVIDERS, "KubernetesProvider"]:
        assert f"`{name}`" in text, name
        init = getattr(parsl.providers, name).__init__
        for key in list(inspect.signature(init).parameters)[1:]:
            assert f"`{key}`" in text, f"{name}.{key} is not documented"
    for name in LAUNCHER_TYPES:
        assert f"`{name}`" in text, name
    for key in ["container_type", "container_uri", "container_cmd_options", "workers_per_node", "max_idle_time_s"]:
        assert f"`{key}`" in text, key


def test_a_bad_item_inside_an_option_is_named_with_its_place() -> None:
    options = {"type": "KubernetesProvider", "image": "img", "persistent_volumes": [["a", "/b"], ["c", 3]]}
    with pytest.raises(ConfigError, match=r"expected a string, got 3") as caught:
        parse_provider_config(options)
    assert caught.value.key == "provider.persistent_volumes[1][1]"
