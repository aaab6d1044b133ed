"""Container settings and the launch command for every runtime (rendering only; bwrap runs in integration)."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from taskfabric.endpoint_agent.containers import (
    BWRAP_TEMPLATE,
    CONTAINER_TYPES,
    ContainerSettings,
    load_container_settings,
    wrap_launch_command,
)
from taskfabric.errors import ConfigError

LAUNCH = ["taskfabric", "manager", "run", "--interchange", "tcp://10.0.0.1:55001", "--block-id", "ab12-0"]
LAUNCH_TEXT = shlex.join(LAUNCH)
RUNDIR = "/home/u/.taskfabric/ep one"  # a space, to see the quoting


def render(**settings: Any) -> str:
    return wrap_launch_command(load_container_settings(settings), LAUNCH, RUNDIR)


def test_none_is_the_default_and_returns_the_command_as_is() -> None:
    settings = load_container_settings(None)
    assert settings == ContainerSettings()
    assert not settings.enabled
    assert wrap_launch_command(settings, LAUNCH, RUNDIR) == LAUNCH_TEXT
    assert wrap_launch_command(settings, "echo hi", RUNDIR) == "echo hi"


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_docker_and_podman(runtime: str) -> None:
    command = render(container_type=runtime, container_uri="ghcr.io/lab/worker:1.2", container_cmd_options="--gpus all")
    assert command == (
        f"{runtime} run --rm --network host --gpus all -v '{RUNDIR}:{RUNDIR}' -t ghcr.io/lab/worker:1.2 {LAUNCH_TEXT}"
    )
    assert shlex.split(command)[-len(LAUNCH) :] == LAUNCH


@pytest.mark.parametrize(
    ("options", "expected_prefix"),
    [
        ("--network=bridge", "docker run --rm --network=bridge"),
        ("--net none", "docker run --rm --net none"),
        ("--rm=false", "docker run --network host --rm=false"),
        ("--rm --network host", "docker run --rm --network host -v"),
    ],
)
def test_docker_defaults_give_way_to_the_owners_options(options: str, expected_prefix: str) -> None:
    command = render(container_type="docker", container_uri="img", container_cmd_options=options)
    assert command.startswith(expected_prefix)
    words = shlex.split(command)
    assert words.count("--rm") <= 1
    assert words.count("--network") + words.count("--net") <= 1


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_and_singularity(runtime: str) -> None:
    command = render(
        container_type=runtime, container_uri="/shared/images/worker v2.sif", container_cmd_options="-B /scratch"
    )
    assert command == f"{runtime} run -B /scratch '/shared/images/worker v2.sif' {LAUNCH_TEXT}"
    assert shlex.split(command) == [runtime, "run", "-B", "/scratch", "/shared/images/worker v2.sif", *LAUNCH]


def test_apptainer_without_options_has_no_empty_word() -> None:
    assert render(container_type="apptainer", container_uri="docker://python:3.11") == (
        f"apptainer run docker://python:3.11 {LAUNCH_TEXT}"
    )


def test_custom_substitutes_both_placeholders_with_quoting() -> None:
    template = "my-sandbox --dir {EXECUTOR_RUNDIR} -- {EXECUTOR_LAUNCH_CMD}"
    command = render(container_type="custom", container_cmd_options=template)
    assert shlex.split(command) == ["my-sandbox", "--dir", RUNDIR, "--", *LAUNCH]


def test_custom_leaves_other_braces_alone() -> None:
    template = "env EXTRA=${HOME} {EXECUTOR_LAUNCH_CMD} --json '{\"a\": 1}'"
    command = render(container_type="custom", container_cmd_options=template)
    assert command == f"env EXTRA=${{HOME}} {LAUNCH_TEXT} --json '{{\"a\": 1}}'"


def test_the_bwrap_template_renders_to_a_bwrap_command() -> None:
    command = render(container_type="custom", container_cmd_options=BWRAP_TEMPLATE)
    words = shlex.split(command)
    assert words[0] == "bwrap"
    assert words[words.index("--bind") + 1 : words.index("--bind") + 3] == [RUNDIR, RUNDIR]
    assert "--unshare-pid" in words
    assert words[-len(LAUNCH) :] == LAUNCH


def test_a_shell_string_launch_command_is_used_verbatim() -> None:
    settings = load_container_settings({"container_type": "apptainer", "container_uri": "img.sif"})
    assert wrap_launch_command(settings, "python3 -m mod --x 1", "/r") == "apptainer run img.sif python3 -m mod --x 1"


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"container_type": "docker"}, "container.container_uri", "required when container_type is 'docker'"),
        ({"container_type": "apptainer", "container_uri": "  "}, "container.container_uri", "required"),
        ({"container_uri": "img"}, "container.container_uri", "container_type is 'none'"),
        ({"container_cmd_options": "--rm"}, "container.container_cmd_options", "container_type is 'none'"),
        ({"container_type": "custom"}, "container.container_cmd_options", "{EXECUTOR_LAUNCH_CMD}"),
        (
            {"container_type": "custom", "container_cmd_options": "x {EXECUTOR_RUNDIR}"},
            "container.container_cmd_options",
            "must contain {EXECUTOR_LAUNCH_CMD}",
        ),
        (
            {"container_type": "custom", "container_cmd_options": "x {EXECUTOR_WORKDIR} {EXECUTOR_LAUNCH_CMD}"},
            "container.container_cmd_options",
            "unknown placeholder(s) {EXECUTOR_WORKDIR}",
        ),
        (
            {"container_type": "docker", "container_uri": "i", "container_cmd_options": "-e 'A=1"},
            "container.container_cmd_options",
            "unbalanced quotes",
        ),
        ({"container_type": "dockr"}, "container.container_type", "expected one of"),
        ({"container_typ": "docker"}, "container.container_typ", "did you mean 'container_type'"),
        ({"container_type": "docker", "container_uri": 3}, "container.container_uri", "expected"),
    ],
)
def test_invalid_settings_name_the_key_and_the_file(settings: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_container_settings(settings, source="/etc/ep.yaml")
    assert caught.value.key == key
    assert words in str(caught.value)
    assert str(caught.value).endswith("in /etc/ep.yaml")


def test_settings_built_in_code_are_checked_when_used() -> None:
    settings = ContainerSettings(container_type="podman")
    with pytest.raises(ConfigError, match="container_uri: required"):
        wrap_launch_command(settings, LAUNCH, RUNDIR)


def test_every_runtime_renders() -> None:
    extra = {"custom": {"container_cmd_options": BWRAP_TEMPLATE}}
    for runtime in CONTAINER_TYPES:
        settings = {"container_type": runtime, **extra.get(runtime, {"container_uri": "img"})}
        if runtime == "none":
            settings = {}
        assert render(**settings).endswith(LAUNCH_TEXT)


def test_bwrap_template_keeps_given_paths_visible_over_the_private_tmp() -> None:
    from taskfabric.endpoint_agent.containers import bwrap_template

    template = bwrap_template(["/tmp/my checkout", "/opt/venv"])
    assert (
        "--tmpfs /tmp --ro-bind-try '/tmp/my checkout' '/tmp/my checkout' --ro-bind-try /opt/venv /opt/venv" in template
    )
    assert bwrap_template() == BWRAP_TEMPLATE
