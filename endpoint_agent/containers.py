"""Running managers inside a container: the settings and the command line that wraps the launch.

Pure logic, no I/O: `wrap_launch_command` renders a shell command; the provider's job script runs it.
The contract is Globus Compute's (``container_type``, ``container_uri``, ``container_cmd_options``),
and the whole *manager* (with its workers) runs inside the container, so the image needs taskfabric
installed. Renderings, with ``{launch}`` the manager's command line::

    docker / podman         {cmd} run --rm --network host {options} -v {rundir}:{rundir} -t {uri} {launch}
    apptainer / singularity {cmd} run {options} {uri} {launch}
    custom                  container_cmd_options, with {EXECUTOR_RUNDIR} and {EXECUTOR_LAUNCH_CMD} replaced
    none                    {launch}

Choices for docker/podman beyond Globus Compute's line: ``--rm`` so that a block leaves no stopped
container behind on the node (blocks come and go all day), and ``--network host`` so that the
manager reaches the interchange at the same ``tcp://HOST:PORT`` as a manager outside a container
(on the default bridge network ``127.0.0.1`` would be the container itself and the host's address
may be firewalled). Either is left out when ``container_cmd_options`` already says otherwise
(``--rm``/``--network``/``--net``). ``-t`` is kept for compatibility with Globus Compute configs.

Apptainer/Singularity share the host's network and mount the current directory by default, so they
need neither. `BWRAP_TEMPLATE` is a ready ``custom`` template for bubblewrap (Debian's
``bubblewrap``): the host's file system read-only, a private /tmp and PID namespace, the run
directory writable.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from taskfabric.errors import ConfigError
from taskfabric.settings import load_settings, setting

__all__ = [
    "BWRAP_TEMPLATE",
    "CONTAINER_TYPES",
    "LAUNCH_CMD_PLACEHOLDER",
    "RUNDIR_PLACEHOLDER",
    "ContainerSettings",
    "ContainerType",
    "bwrap_template",
    "load_container_settings",
    "wrap_launch_command",
]

ContainerType = Literal["none", "docker", "podman", "apptainer", "singularity", "custom"]
CONTAINER_TYPES: tuple[str, ...] = ("none", "docker", "podman", "apptainer", "singularity", "custom")

RUNDIR_PLACEHOLDER = "{EXECUTOR_RUNDIR}"
LAUNCH_CMD_PLACEHOLDER = "{EXECUTOR_LAUNCH_CMD}"
_PLACEHOLDER = re.compile(r"\{EXECUTOR_[A-Z_]+\}")

BWRAP_TEMPLATE = (
    "bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp "
    "--bind {EXECUTOR_RUNDIR} {EXECUTOR_RUNDIR} --chdir {EXECUTOR_RUNDIR} "
    "--unshare-pid --die-with-parent {EXECUTOR_LAUNCH_CMD}"
)


def bwrap_template(visible: Sequence[str | Path] = ()) -> str:
    """`BWRAP_TEMPLATE`, with `visible` paths bound read-only over the private /tmp: needed when
    the Python installation (or the source checkout of an editable install) lives under /tmp."""
    binds = "".join(f" --ro-bind-try {shlex.quote(str(path))} {shlex.quote(str(path))}" for path in visible)
    return BWRAP_TEMPLATE.replace("--tmpfs /tmp", f"--tmpfs /tmp{binds}", 1)


"""A `custom` template for bubblewrap: read-only host, private /tmp and PID namespace, rundir writable."""

_OCI_RUNTIMES = ("docker", "podman")
_SIF_RUNTIMES = ("apptainer", "singularity")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ContainerSettings:
    """Where the manager of each block runs: on the node directly, or inside a container.

    Load it with `load_container_settings`, which checks each value and the combination; code that
    builds one directly gets the same checks from `validate()` (and `wrap_launch_command` runs them).
    """

    container_type: ContainerType = setting(
        "none", help="none, docker, podman, apptainer, singularity, or custom (a template of your own)"
    )
    container_uri: str | None = setting(
        None, help="the image: a docker/podman image name, or an apptainer/singularity image path or URI"
    )
    container_cmd_options: str = setting(
        "",
        help="extra options for `<runtime> run`, inserted verbatim (shell words); for `custom`, the whole "
        "command template, with {EXECUTOR_RUNDIR} and {EXECUTOR_LAUNCH_CMD} placeholders",
    )

    def validate(self, *, prefix: str = "", source: str | None = None) -> None:
        """Raise `ConfigError` naming the key (`prefix` + key) when the combination is invalid."""
        for key, problem in _problems(self):
            raise ConfigError(problem, key=f"{prefix}{key}", source=source)

    @property
    def enabled(self) -> bool:
        """True when managers run inside a container."""
        return self.container_type != "none"


def load_container_settings(
    data: Mapping[str, Any] | None, *, source: str = "settings", prefix: str = "container."
) -> ContainerSettings:
    """`ContainerSettings` from a config mapping (None: no container), every key and rule checked.

    Raises `ConfigError` naming the key path (e.g. ``container.container_uri``) and `source`.
    """
    settings = load_settings(ContainerSettings, data or {}, source=source, prefix=prefix)
    settings.validate(prefix=prefix, source=source)
    return settings


def wrap_launch_command(settings: ContainerSettings, launch_cmd: str | Sequence[str], rundir: str | Path) -> str:
    """The shell command that runs `launch_cmd` inside the container `settings` describes.

    `launch_cmd` is the manager's command: an argument list (quoted here) or a shell string of
    plain words (used as is). `rundir` is the directory the manager works in; it is made visible
    inside the container at the same path.
    """
    settings.validate()
    launch = launch_cmd if isinstance(launch_cmd, str) else shlex.join(launch_cmd)
    kind = settings.container_type
    if kind == "none":
        return launch
    if kind == "custom":
        return _render_custom(settings.container_cmd_options, launch, str(rundir))
    image = shlex.quote(settings.container_uri or "")
    options = settings.container_cmd_options.strip()
    if kind in _SIF_RUNTIMES:
        return _join(kind, "run", options, image, launch)
    mount = shlex.quote(f"{rundir}:{rundir}")
    return _join(kind, "run", *_oci_defaults(options), options, "-v", mount, "-t", image, launch)


# --- helpers ------------------------------------------------------------------------------


def _problems(settings: ContainerSettings) -> list[tuple[str, str]]:
    """(key, problem) for each rule `settings` breaks."""
    kind, uri, options = settings.container_type, settings.container_uri, settings.container_cmd_options
    if kind not in CONTAINER_TYPES:
        return [("container_type", f"must be one of {', '.join(CONTAINER_TYPES)}, got {kind!r}")]
    if kind == "none":
        if uri or options:
            key = "container_uri" if uri else "container_cmd_options"
            return [(key, "is set, but container_type is 'none'; set container_type too (e.g. docker)")]
        return []
    if kind == "custom":
        return [("container_cmd_options", problem) for problem in _template_problems(options)]
    problems = []
    if not uri or not uri.strip():
        problems.append(("container_uri", f"required when container_type is {kind!r} (the image to run)"))
    if not _splits(options):
        problems.append(("container_cmd_options", "unbalanced quotes"))
    return problems


def _template_problems(template: str) -> list[str]:
    if LAUNCH_CMD_PLACEHOLDER not in template:
        return [f"a custom container template must contain {LAUNCH_CMD_PLACEHOLDER} (where the manager runs)"]
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - {LAUNCH_CMD_PLACEHOLDER, RUNDIR_PLACEHOLDER})
    if unknown:
        return [f"unknown placeholder(s) {', '.join(unknown)}; known: {RUNDIR_PLACEHOLDER}, {LAUNCH_CMD_PLACEHOLDER}"]
    if not _splits(template):
        return ["unbalanced quotes in the custom template"]
    return []


def _splits(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:
        return False
    return True


def _render_custom(template: str, launch: str, rundir: str) -> str:
    # plain replacement, not str.format: templates may hold other braces (${VAR}, JSON)
    return template.replace(RUNDIR_PLACEHOLDER, shlex.quote(rundir)).replace(LAUNCH_CMD_PLACEHOLDER, launch).strip()


def _oci_defaults(options: str) -> list[str]:
    words = shlex.split(options)
    defaults = []
    if not any(word == "--rm" or word.startswith("--rm=") for word in words):
        defaults.append("--rm")
    if not any(word.split("=")[0] in ("--network", "--net") for word in words):
        defaults += ["--network", "host"]
    return defaults


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)
