"""Parsl providers and launchers from an endpoint's config, validated eagerly; the block command.

The ``provider:`` section names a class of `parsl.providers` with ``type:`` and passes the other
keys to its constructor; its ``launcher:`` names a class of `parsl.launchers` the same way::

    provider:
      type: SlurmProvider
      partition: debug
      max_blocks: 2
      walltime: "00:10:00"
      launcher: {type: SrunLauncher}

`parse_provider_config` checks everything it can without running anything: the type (suggesting
the closest name), every key against the class's ``__init__`` signature (suggesting the closest),
each value's type where the signature's annotation or default makes it clear, and the block
counts. Mistakes are `ConfigError`s naming the key path (``provider.max_blockz``) and the file.
`build_provider` then creates the provider (some run a scheduler command while doing so:
SlurmProvider probes ``sacct``) and sets its ``script_dir``. `load_block_config` reads the three
sections this package owns (``provider``, ``container``, ``scaling``) from an endpoint config.

`render_block_command` is the command a block runs. Every Parsl provider writes its own
``worker_init`` into the job script ahead of that command (Slurm, PBS, Torque, LSF, GridEngine and
Condor through their templates, LocalProvider and KubernetesProvider by prepending it), so the
command does not repeat it; with a container, ``worker_init`` runs on the node, outside it.

This package and `blocks` are the only ones that touch Parsl; Parsl's errors stop here. Two
modules: `config` reads and checks the sections (no Parsl object is created), `build` creates the
Parsl objects and renders the block command.
"""

from __future__ import annotations

from taskfabric.endpoint_agent.providers.build import build_provider, render_block_command
from taskfabric.endpoint_agent.providers.config import (
    CONTAINERLESS_PROVIDERS,
    DEFAULT_PROVIDER_TYPE,
    LAUNCHER_TYPES,
    PROVIDER_TYPES,
    BlockConfig,
    LauncherSpec,
    ProviderSpec,
    load_block_config,
    parse_provider_config,
)

__all__ = [
    "CONTAINERLESS_PROVIDERS",
    "DEFAULT_PROVIDER_TYPE",
    "LAUNCHER_TYPES",
    "PROVIDER_TYPES",
    "BlockConfig",
    "LauncherSpec",
    "ProviderSpec",
    "build_provider",
    "load_block_config",
    "parse_provider_config",
    "render_block_command",
]
