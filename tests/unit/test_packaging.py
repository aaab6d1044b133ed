"""One namespace: every component folder is importable as taskfabric.X, and only so."""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import taskfabric

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = ["broker_config", "forwarder", "endpoint_agent", "client", "manager"]


# ("tests" is left out: pytest's importlib mode registers it in sys.modules itself)
@pytest.mark.parametrize("name", [*COMPONENTS, "protocol", "transport"])
def test_generic_top_level_names_are_not_importable(name: str) -> None:
    assert importlib.util.find_spec(name) is None


def test_import_client_fails_even_from_the_repository_root() -> None:
    # the way a user would trip over it: a Python started in the checkout
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "import client"], cwd="/", capture_output=True, text=True, check=False
    )
    assert probe.returncode != 0
    assert "No module named 'client'" in probe.stderr


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_live_in_the_taskfabric_namespace(name: str) -> None:
    module = importlib.import_module(f"taskfabric.{name}")
    assert Path(module.__file__ or "").resolve() == REPO / name / "__init__.py"
    assert module.__doc__, f"taskfabric.{name} needs a docstring saying what it is"


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in parser["options"]["package_dir"].strip().splitlines() if " = " in line)
    found = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed


def test_tests_have_no_init_file() -> None:
    assert not (REPO / "tests" / "__init__.py").exists()


def test_version() -> None:
    assert taskfabric.__version__.count(".") == 2
