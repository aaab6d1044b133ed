"""The ``provider:``, ``container:`` and ``scaling:`` sections of an endpoint config, read and
checked against the Parsl classes' signatures without creating anything (see the package docstring)."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import parsl.launchers
import parsl.providers

from taskfabric.conform import Mismatch, conform
from taskfabric.endpoint_agent.block_types import BlockSpec
from taskfabric.endpoint_agent.containers import ContainerSettings, load_container_settings
from taskfabric.endpoint_agent.strategy import ScalingSettings
from taskfabric.errors import ConfigError
from taskfabric.settings import load_settings

__all__ = [
    "CONTAINERLESS_PROVIDERS",
    "DEFAULT_PROVIDER_TYPE",
    "LAUNCHER_TYPES",
    "PROVIDER_TYPES",
    "BlockConfig",
    "LauncherSpec",
    "ProviderSpec",
    "load_block_config",
    "parse_provider_config",
]

DEFAULT_PROVIDER_TYPE = "LocalProvider"
PROVIDER_TYPES: tuple[str, ...] = tuple(sorted(set(parsl.providers.__all__)))
LAUNCHER_TYPES: tuple[str, ...] = tuple(sorted(set(parsl.launchers.__all__)))

CONTAINERLESS_PROVIDERS = frozenset({"KubernetesProvider", "AWSProvider", "AzureProvider", "GoogleCloudProvider"})
"""Providers whose blocks already are containers or VMs of an image: `container_*` settings are refused."""

# Types of common keys where a provider's signature has no annotation (PBSPro, Torque, LSF, GridEngine
# and Local are unannotated; their defaults alone would read `parallelism=1` as an integer).
_KNOWN_TYPES: dict[str, Any] = {
    "nodes_per_block": int,
    "init_blocks": int,
    "min_blocks": int,
    "max_blocks": int,
    "parallelism": float,
    "walltime": str,
    "worker_init": str,
    "scheduler_options": str,
    "select_options": str,
    "cmd_timeout": int,
    "account": str | None,
    "queue": str | None,
    "project": str | None,
    "cpus_per_node": int,
    "cores_per_node": int | None,
    "cores_per_block": int | None,
    "bsub_redirection": bool,
    "request_by_nodes": bool,
}
_BLOCK_COUNTS = ("init_blocks", "min_blocks", "max_blocks")
#: resource sizes and scheduler limits a provider passes on as they are: a negative one is a typo,
#: never a request (0 stays allowed where it means something: Slurm's --mem=0 is "all the memory")
_NON_NEGATIVE_SIZES = ("mem_per_node", "mem_per_slot", "gpus_per_node")
_POSITIVE_SIZES = (
    "cores_per_node",
    "cpus_per_node",
    "cores_per_block",
    "cores_per_slot",
    "cmd_timeout",
    "status_batch_size",
    "cmd_chunk_size",
)
_WALLTIME = re.compile(r"^\d+:[0-5]?\d:[0-5]?\d$")


@dataclasses.dataclass(frozen=True, slots=True)
class LauncherSpec:
    """A validated ``launcher:`` section: the class name in `parsl.launchers` and its arguments."""

    type: str
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A validated ``provider:`` section, ready for `build_provider`.

    `options` are the constructor's keyword arguments (the launcher aside); `launcher` is None
    when the provider's default launcher is wanted; `block` is the block shape the agent needs.
    """

    type: str
    options: Mapping[str, Any]
    launcher: LauncherSpec | None
    block: BlockSpec
    source: str = "config"
    key: str = "provider"


@dataclasses.dataclass(frozen=True, slots=True)
class BlockConfig:
    """The sections of an endpoint config that say how blocks of managers are started and scaled."""

    provider: ProviderSpec
    container: ContainerSettings
    scaling: ScalingSettings


@dataclasses.dataclass(frozen=True, slots=True)
class _Param:
    name: str
    expected: Any  # a type annotation, or None when the signature does not make it clear
    default: Any
    required: bool


# --- public -------------------------------------------------------------------------------


def parse_provider_config(
    data: Mapping[str, Any] | None, *, source: str = "config", key: str = "provider"
) -> ProviderSpec:
    """Validate a ``provider:`` mapping (None: a default LocalProvider) without creating anything.

    Raises `ConfigError` naming the key path (e.g. ``provider.launcher.type``) and `source`.
    """
    data = _require_mapping(data or {}, key=key, source=source)
    type_name = _type_name(data, "provider", PROVIDER_TYPES, DEFAULT_PROVIDER_TYPE, key=key, source=source)
    cls = getattr(parsl.providers, type_name)
    params = _init_params(cls)
    options: dict[str, Any] = {}
    launcher: LauncherSpec | None = None
    for name, value in data.items():
        if name == "type":
            continue
        path = f"{key}.{name}"
        param = _known_param(params, str(name), path=path, owner=type_name, source=source)
        if name == "launcher":
            launcher = _parse_launcher(value, key=path, source=source)
        else:
            options[name] = _conform_value(param, value, key=path, source=source)
    _require_all(params, options.keys() | ({"launcher"} if launcher else set()), key=key, source=source)
    block = _block_spec(params, options, key=key, source=source)
    return ProviderSpec(type_name, options, launcher, block, source, key)


def load_block_config(data: Mapping[str, Any], *, source: str = "config") -> BlockConfig:
    """The ``provider``, ``container`` and ``scaling`` sections of an endpoint config, validated.

    Other top-level keys belong to the agent and are left alone. Raises `ConfigError`.
    """
    data = _require_mapping(data, key=None, source=source)
    provider = parse_provider_config(data.get("provider"), source=source, key="provider")
    container = load_container_settings(data.get("container"), source=source, prefix="container.")
    scaling = load_settings(ScalingSettings, data.get("scaling") or {}, source=source, prefix="scaling.")
    if container.enabled and provider.type in CONTAINERLESS_PROVIDERS:
        raise ConfigError(
            f"{provider.type} starts managers in its own image; container_* settings are not supported with it",
            key="container.container_type",
            source=source,
        )
    return BlockConfig(provider, container, scaling)


# --- validation ---------------------------------------------------------------------------


def _require_mapping(data: Any, *, key: str | None, source: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", key=key, source=source)
    return data


def _type_name(
    data: Mapping[str, Any], kind: str, choices: Sequence[str], default: str | None, *, key: str, source: str
) -> str:
    name = data.get("type", default)
    if name is None:
        raise ConfigError(
            f"is required: the {kind} class, one of {', '.join(choices)}", key=f"{key}.type", source=source
        )
    if not isinstance(name, str) or name not in choices:
        raise ConfigError(
            f"unknown {kind} type {name!r}{_did_you_mean(str(name), choices)}; known: {', '.join(choices)}",
            key=f"{key}.type",
            source=source,
        )
    return name


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    by_lower = {choice.lower(): choice for choice in choices}
    lowered = name.lower()
    close = [by_lower[c] for c in by_lower if c.startswith(lowered) and lowered] or [
        by_lower[c] for c in difflib.get_close_matches(lowered, list(by_lower), n=1, cutoff=0.6)
    ]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _init_params(cls: type) -> dict[str, _Param]:
    """The keyword parameters of `cls.__init__` with their expected types."""
    init: Callable[..., Any] = cls.__init__  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable annotations: fall back to defaults
        hints = {}
    params = {}
    for param in list(inspect.signature(init).parameters.values())[1:]:
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        required = param.default is param.empty
        default = None if required else param.default
        expected = hints.get(param.name) or _KNOWN_TYPES.get(param.name) or _type_of_default(default)
        params[param.name] = _Param(param.name, expected, default, required)
    return params


def _type_of_default(default: Any) -> Any:
    if isinstance(default, (bool, int, float, str, list, dict)):
        return type(default)
    return None


def _known_param(params: Mapping[str, _Param], name: str, *, path: str, owner: str, source: str) -> _Param:
    if name in params:
        return params[name]
    raise ConfigError(
        f"unknown key for {owner}{_did_you_mean(name, list(params))}; known keys: {', '.join(sorted(params))}",
        key=path,
        source=source,
    )


def _require_all(params: Mapping[str, _Param], given: typing.AbstractSet[str], *, key: str, source: str) -> None:
    for name, param in params.items():
        if param.required and name not in given:
            raise ConfigError("is required", key=f"{key}.{name}", source=source)


def _conform_value(param: _Param, value: Any, *, key: str, source: str) -> Any:
    if param.name == "walltime":
        return _check_walltime(value, key=key, source=source)
    try:
        conformed = conform(value, param.expected)
    except Mismatch as bad:
        message = f"expected {bad.expected}, got {bad.value!r}"
        raise ConfigError(message, key=f"{key}{bad.where}", source=source) from None
    _check_size(param.name, conformed, key=key, source=source)
    return conformed


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_size(name: str, value: Any, *, key: str, source: str) -> None:
    if not _is_number(value):
        return
    if name in _NON_NEGATIVE_SIZES and value < 0:
        raise ConfigError(f"must be 0 or more, got {value!r}", key=key, source=source)
    if name in _POSITIVE_SIZES and value < 1:
        raise ConfigError(f"must be at least 1, got {value!r}", key=key, source=source)


def _check_walltime(value: Any, *, key: str, source: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(
            f'expected "HH:MM:SS" in quotes, got the number {value} (YAML reads an unquoted 00:10:00 as a '
            'number of seconds): write walltime: "00:10:00"',
            key=key,
            source=source,
        )
    if not isinstance(value, str) or not _WALLTIME.match(value):
        raise ConfigError(f'expected "HH:MM:SS", got {value!r}', key=key, source=source)
    hours, minutes, _ = (int(part) for part in value.split(":"))
    if hours * 60 + minutes < 1:
        raise ConfigError(
            f"must be at least one minute (schedulers count minutes), got {value!r}", key=key, source=source
        )
    return value


def _block_spec(params: Mapping[str, _Param], options: Mapping[str, Any], *, key: str, source: str) -> BlockSpec:
    def value(name: str, fallback: Any) -> Any:
        if name in options:
            return options[name]
        return params[name].default if name in params else fallback

    spec = BlockSpec(
        nodes_per_block=value("nodes_per_block", 1),
        init_blocks=value("init_blocks", 0),
        min_blocks=value("min_blocks", 0),
        max_blocks=value("max_blocks", 1),
        parallelism=float(value("parallelism", 1.0)),
        walltime=value("walltime", None),
        worker_init=value("worker_init", "") or "",
    )
    for problem_key, problem in _block_problems(spec):
        raise ConfigError(problem, key=f"{key}.{problem_key}", source=source)
    return spec


def _block_problems(spec: BlockSpec) -> list[tuple[str, str]]:
    problems = [(name, "must not be negative") for name in _BLOCK_COUNTS if getattr(spec, name) < 0]
    if spec.nodes_per_block < 1:
        problems.append(("nodes_per_block", "must be at least 1"))
    if not 0 <= spec.parallelism <= 1:
        problems.append(("parallelism", f"must be between 0 and 1, got {spec.parallelism:g}"))
    if spec.min_blocks > spec.max_blocks:
        problems.append(("min_blocks", f"({spec.min_blocks}) is more than max_blocks ({spec.max_blocks})"))
    if spec.init_blocks > spec.max_blocks:
        problems.append(("init_blocks", f"({spec.init_blocks}) is more than max_blocks ({spec.max_blocks})"))
    return problems


def _parse_launcher(value: Any, *, key: str, source: str) -> LauncherSpec:
    if isinstance(value, str):  # shorthand: `launcher: SrunLauncher`
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"expected a mapping with a type (e.g. {{type: SrunLauncher}}), got {value!r}", key=key, source=source
        )
    type_name = _type_name(value, "launcher", LAUNCHER_TYPES, None, key=key, source=source)
    params = _init_params(getattr(parsl.launchers, type_name))
    options = {}
    for name, item in value.items():
        if name != "type":
            param = _known_param(params, str(name), path=f"{key}.{name}", owner=type_name, source=source)
            options[name] = _conform_value(param, item, key=f"{key}.{name}", source=source)
    _require_all(params, options.keys(), key=key, source=source)
    return LauncherSpec(type_name, options)
