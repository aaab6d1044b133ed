"""Creating the Parsl provider and launcher an endpoint config describes, and the command each
block runs (see the package docstring)."""

from __future__ import annotations

import importlib.util
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

import parsl.launchers
import parsl.providers
from parsl.errors import OptionalModuleMissing
from parsl.launchers.base import Launcher
from parsl.providers.base import ExecutionProvider

from taskfabric.endpoint_agent.containers import ContainerSettings, wrap_launch_command
from taskfabric.endpoint_agent.providers.config import LauncherSpec, ProviderSpec
from taskfabric.errors import ConfigError

__all__ = ["build_provider", "render_block_command"]

log = logging.getLogger(__name__)

# module to import -> what to pip install, for providers whose dependencies are optional
_OPTIONAL_DEPENDENCIES: dict[str, tuple[str, str]] = {
    "KubernetesProvider": ("kubernetes", "kubernetes"),
    "AWSProvider": ("boto3", "boto3"),
    "GoogleCloudProvider": ("googleapiclient", "google-api-python-client"),
    "AzureProvider": ("azure.mgmt.compute", "azure-mgmt-compute azure-mgmt-network azure-mgmt-resource"),
}


def build_provider(spec: ProviderSpec, *, script_dir: Path) -> ExecutionProvider:
    """Create the provider `spec` describes, with its ``script_dir`` set to `script_dir` (created).

    Job scripts, and the jobs' stdout/stderr files, go to `script_dir`: on a cluster put it on a
    file system the compute nodes share (e.g. under the endpoint's directory in $HOME). May run
    scheduler commands (SlurmProvider probes ``sacct``), so call it at start-up or from the
    scaling thread. Raises `ConfigError` when the provider cannot be created (a missing optional
    package, an unreachable Kubernetes config...), naming the section and the file.
    """
    _check_optional_dependency(spec)
    kwargs = dict(spec.options)
    if spec.launcher is not None:
        kwargs["launcher"] = _build_launcher(spec.launcher, key=f"{spec.key}.launcher", source=spec.source)
    cls = getattr(parsl.providers, spec.type)
    try:
        provider: ExecutionProvider = cls(**kwargs)
    except OptionalModuleMissing as exc:
        raise ConfigError(f"{spec.type} needs optional packages: {exc}", key=spec.key, source=spec.source) from None
    except Exception as exc:  # any constructor failure is a configuration problem at this boundary
        raise ConfigError(
            f"could not create {spec.type}: {type(exc).__name__}: {exc}", key=spec.key, source=spec.source
        ) from None
    try:
        Path(script_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the submit script directory {script_dir}: {exc}") from None
    provider.script_dir = str(Path(script_dir).absolute())
    _keep_final_job_states(provider)
    return provider


def render_block_command(
    manager_command: str | Sequence[str], *, rundir: str | Path, container: ContainerSettings | None = None
) -> str:
    """The command a provider submits for one block: the manager's command, in the container if any.

    `manager_command` is an argument list (quoted here) or a shell string of plain words, e.g.
    ``["taskfabric", "manager", "run", "--interchange", "tcp://HOST:PORT", "--block-id", "B"]``.
    ``worker_init`` is not part of it: the provider writes it into the job script before this
    command (see the module docstring). Launchers paste the command into a bash script (SrunLauncher
    through an unquoted here-document), so keep ``$``, backticks and backslashes out of it unless
    they are meant to be expanded on the node.
    """
    command = manager_command if isinstance(manager_command, str) else shlex.join(manager_command)
    if container is None or not container.enabled:
        return command
    return wrap_launch_command(container, command, rundir)


# --- creation -----------------------------------------------------------------------------


def _check_optional_dependency(spec: ProviderSpec) -> None:
    needed = _OPTIONAL_DEPENDENCIES.get(spec.type)
    if needed is None:
        return
    module, pip_name = needed
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package of a dotted name
        found = False
    if not found:
        raise ConfigError(
            f"{spec.type} needs the optional Python package {pip_name!r}, which is not installed in the agent's "
            f"environment: pip install {pip_name}",
            key=f"{spec.key}.type",
            source=spec.source,
        )


def _build_launcher(spec: LauncherSpec, *, key: str, source: str) -> Launcher:
    cls = getattr(parsl.launchers, spec.type)
    try:
        launcher: Launcher = cls(**spec.options)
    except Exception as exc:  # a constructor failure is a configuration problem at this boundary
        raise ConfigError(f"could not create {spec.type}: {exc}", key=key, source=source) from None
    return launcher


def _keep_final_job_states(provider: ExecutionProvider) -> None:
    """Let SlurmProvider see how jobs ended when Slurm accounting (sacct) is off.

    Without accounting, SlurmProvider asks ``squeue --job IDS``, which lists only live jobs; every
    job that disappears is reported COMPLETED, whatever happened (walltime, failure). With
    ``--states=all`` squeue also lists finished jobs while slurmctld remembers them (MinJobAge,
    300 s by default), so TIMEOUT, FAILED and CANCELLED come through. This edits a private
    attribute of SlurmProvider; when it is not there (another Parsl), nothing changes.
    """
    command = getattr(provider, "_cmd", None)
    if type(provider).__name__ != "SlurmProvider" or not isinstance(command, str):
        return
    if command.startswith("squeue ") and "--states" not in command:
        provider._cmd = command.replace("squeue ", "squeue --states=all ", 1)  # type: ignore[attr-defined]
        log.info("Slurm accounting is off: reading job end states from squeue --states=all")
