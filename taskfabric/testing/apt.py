"""Debian packages that tests run for real (Slurm, bubblewrap): installed on demand when we are root.

`ensure_packages(["bubblewrap"])` returns at once when the packages are installed, installs the
missing ones with apt-get when this process is root (running `apt-get update` only if the first
attempt fails), and otherwise raises `MissingSystemPackages` with the command that fixes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable

from taskfabric.errors import TaskfabricError

__all__ = ["MissingSystemPackages", "ensure_packages", "is_installed"]

log = logging.getLogger(__name__)

_APT_TIMEOUT_S = 900.0


class MissingSystemPackages(TaskfabricError):
    """Debian packages a test needs are missing and could not be installed; the message says why."""


def is_installed(package: str) -> bool:
    """Whether dpkg reports `package` as installed."""
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "install ok installed" in done.stdout


def ensure_packages(packages: Iterable[str]) -> None:
    """Install whichever of `packages` are missing (root only), or raise `MissingSystemPackages`."""
    missing = [package for package in packages if not is_installed(package)]
    if not missing:
        return
    command = f"sudo apt-get install -y --no-install-recommends {' '.join(missing)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise MissingSystemPackages(
            f"missing Debian packages {', '.join(missing)}, and this process cannot install them (needs root and "
            f"apt-get). Run: {command}"
        )
    log.info("installing %s with apt-get", " ".join(missing))
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if _apt(install) != 0 and (_apt(["apt-get", "update", "-qq"]) != 0 or _apt(install) != 0):
        raise MissingSystemPackages(f"apt-get could not install {', '.join(missing)} (its output is in the log)")


def _apt(command: list[str]) -> int:
    """Run an apt-get command quietly; log its output when it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        log.error("%s timed out after %g s", " ".join(command), _APT_TIMEOUT_S)
        return -1
    if done.returncode != 0:
        log.error("%s failed (exit %d): %s", " ".join(command), done.returncode, (done.stderr or done.stdout)[-2000:])
    return done.returncode
