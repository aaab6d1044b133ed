"""A real, single-node Slurm for tests: munged, slurmctld and slurmd started as root, no systemd.

`SlurmCluster` installs Debian's `slurm-wlm` and `munge` with apt-get when they are missing (root
only), writes a private configuration in a temporary directory (free ports; state, spool, pid and
log files all inside it; the node line from `slurmd -C`; one partition, `debug`, the default),
starts the three daemons and waits until the node is idle::

    with SlurmCluster() as cluster:
        job_id = cluster.sbatch("#!/bin/sh\\ntrue\\n")
        wait_until(lambda: cluster.job_state(job_id) == "COMPLETED")
        subprocess.run(["squeue"], env=cluster.env)       # clients need SLURM_CONF

On exit it cancels every job, stops each daemon by its pid file and verifies that no process of
this cluster (daemon, slurmstepd, job) is left, killing and reporting any that is.

When Slurm cannot be installed or started here, `start()` raises `SlurmUnavailable` with the reason;
that is the only case in which Slurm tests may skip, and they skip with that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import psutil

from taskfabric.errors import TaskfabricError
from taskfabric.processes import free_ports
from taskfabric.testing.apt import MissingSystemPackages, ensure_packages

__all__ = ["SLURM_PACKAGES", "SlurmCluster", "SlurmJob", "SlurmUnavailable", "install_slurm"]

log = logging.getLogger(__name__)

SLURM_PACKAGES = ("slurm-wlm", "munge")
"""Debian packages the cluster needs (slurm-wlm pulls slurmctld, slurmd and the client commands)."""

_REQUIRED_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
_MARKER_ENV = "TASKFABRIC_SLURM_CLUSTER"
_PORT_RANGE = (30000, 32000)
# seeded from the OS, apart from the global `random` (which tests and user code may reseed)
_port_picker = random.Random()
_COMMAND_TIMEOUT_S = 30.0


class SlurmUnavailable(TaskfabricError):
    """Slurm cannot be installed or started on this machine; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class SlurmJob:
    """One job as slurmctld reports it."""

    job_id: str
    name: str
    state: str  # Slurm's long state name: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, FAILED...
    reason: str


def install_slurm(packages: Iterable[str] = SLURM_PACKAGES) -> None:
    """Install the missing Debian `packages` with apt-get (root only), or raise `SlurmUnavailable`."""
    try:
        ensure_packages(packages)
    except MissingSystemPackages as exc:
        raise SlurmUnavailable(f"Slurm cannot be installed: {exc}") from None


class SlurmCluster:
    """A private single-node Slurm living in `directory` (a new temporary directory by default).

    Use it as a context manager, or call `start()` and `stop()`. Must run as root: the daemons run
    as root (`SlurmUser=root`) and apt-get may be needed to install them.
    """

    def __init__(self, directory: Path | None = None, *, install: bool = True, partition: str = "debug") -> None:
        self._own_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="taskfabric-slurm-")).absolute()
        self.partition = partition
        self.install = install
        self.cluster_id = f"tf{secrets.token_hex(4)}"
        self.node_name = socket.gethostname().split(".")[0]
        self.conf_path = self.directory / "slurm.conf"
        self.stray_processes: list[str] = []
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Install if needed, configure, start munged, slurmctld and slurmd, wait until the node is idle."""
        if self._started:
            return
        try:
            if os.geteuid() != 0:
                raise SlurmUnavailable("a private Slurm needs root (its daemons run as root here)")
            if self.install:
                install_slurm()
            self._check_commands()
            self._configure()
        except BaseException:
            self._remove_own_directory()
            raise
        self._started = True
        try:
            self._start_daemons()
            self._wait_node_idle(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Cancel all jobs, stop the daemons by pid file, kill anything of ours that is left."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(SlurmUnavailable, subprocess.SubprocessError, OSError):
            self._cancel_all_jobs(timeout_s)
        # slurmd and slurmctld together (each takes about a second), munged last: they talk through it
        self._stop_daemons(("slurmd", "slurmctld"), timeout_s)
        self._stop_daemons(("munged",), timeout_s)
        self.stray_processes = self._kill_leftovers()
        if self.stray_processes:
            log.warning("killed processes left behind by Slurm cluster %s: %s", self.cluster_id, self.stray_processes)
        self._remove_own_directory()

    def _remove_own_directory(self) -> None:
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- what tests use -----------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """This process's environment plus `SLURM_CONF` (and the marker that finds our jobs later)."""
        return {**os.environ, **self.env_overrides}

    @property
    def env_overrides(self) -> dict[str, str]:
        """Just the variables a Slurm client needs (set them with monkeypatch for Parsl providers)."""
        return {"SLURM_CONF": str(self.conf_path), _MARKER_ENV: self.cluster_id}

    def run(self, *args: str, check: bool = True, timeout_s: float = _COMMAND_TIMEOUT_S) -> str:
        """Run a Slurm client command against this cluster and return its standard output."""
        try:
            done = subprocess.run(
                list(args), env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"{args[0]} did not answer within {timeout_s:g} s") from None
        if check and done.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def sbatch(self, script: str, *options: str) -> str:
        """Submit `script` (its text) to the partition and return the job id."""
        path = self.directory / "jobs" / f"job-{secrets.token_hex(4)}.sh"
        path.parent.mkdir(exist_ok=True)
        path.write_text(script)
        out = self.run(
            "sbatch", "--parsable", f"--partition={self.partition}", f"--chdir={path.parent}", *options, str(path)
        )
        return out.strip().split(";")[0]

    def squeue(self) -> list[SlurmJob]:
        """The jobs that are pending, running or completing."""
        return self._query_jobs("squeue", "--noheader", "--format=%i|%j|%T|%r")

    def jobs(self) -> dict[str, SlurmJob]:
        """Every job slurmctld still remembers (finished ones for `MinJobAge` seconds), by id."""
        return {
            job.job_id: job for job in self._query_jobs("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%r")
        }

    def job_state(self, job_id: str) -> str | None:
        """The state of one job (None once slurmctld has forgotten it)."""
        job = self.jobs().get(job_id)
        return job.state if job else None

    def node_state(self) -> str:
        """The node's state as sinfo reports it (`idle`, `mixed`, `allocated`, `down*`...)."""
        return self.run("sinfo", "--noheader", f"--nodes={self.node_name}", "--format=%T").strip()

    def _query_jobs(self, *args: str) -> list[SlurmJob]:
        return _parse_jobs(self.run(*args))

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: its daemons, slurmstepds and the jobs' processes."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter():
            if proc.pid != os.getpid() and self._is_ours(proc):
                found[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    found.update({child.pid: child for child in proc.children(recursive=True)})
        return [proc for proc in found.values() if _alive(proc)]

    # --- configuration ------------------------------------------------------------------

    def _check_commands(self) -> None:
        missing = [command for command in _REQUIRED_COMMANDS if _which(command) is None]
        if missing:
            raise SlurmUnavailable(
                f"Slurm commands not found: {', '.join(missing)} (install {' '.join(SLURM_PACKAGES)})"
            )

    def _configure(self) -> None:
        for sub in ("munge", "state", "spool", "log", "run", "jobs"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        os.chmod(self.directory / "munge", 0o711)
        key = self.directory / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(1024))
        self.conf_path.write_text(self._config_text(*free_ports(2, _PORT_RANGE, picker=_port_picker)))

    def _config_text(self, ctld_port: int, slurmd_port: int) -> str:
        d = self.directory
        settings = {
            "ClusterName": self.cluster_id,
            "SlurmctldHost": f"{self.node_name}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self._munge_socket}",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": d / "state",
            "SlurmdSpoolDir": d / "spool",
            "SlurmctldPidFile": self._pid_file("slurmctld"),
            "SlurmdPidFile": self._pid_file("slurmd"),
            "SlurmctldLogFile": d / "log" / "slurmctld.log",
            "SlurmdLogFile": d / "log" / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "ReturnToService": 2,
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "MailProg": "/bin/true",
            # cancelled jobs get SIGKILL 2 s after SIGTERM instead of 30 s: tests stay short
            "KillWait": 2,
            "InactiveLimit": 0,
            "MinJobAge": 300,
            "SchedulerType": "sched/backfill",
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(f"{self._node_line()} NodeAddr=127.0.0.1 State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _node_line(self) -> str:
        """`NodeName=... CPUs=... RealMemory=...` as `slurmd -C` measures this machine."""
        out = subprocess.run(
            [_require(_which("slurmd")), "-C"], capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
        )
        for line in out.stdout.splitlines():
            if line.startswith("NodeName="):
                words = line.split()
                return " ".join([f"NodeName={self.node_name}", *words[1:]])
        raise SlurmUnavailable(f"`slurmd -C` did not describe this node: {(out.stderr or out.stdout).strip()}")

    @property
    def _munge_socket(self) -> Path:
        return self.directory / "munge" / "munge.socket.2"

    def _pid_file(self, daemon: str) -> Path:
        return self.directory / "run" / f"{daemon}.pid"

    # --- daemons ------------------------------------------------------------------------

    def _start_daemons(self) -> None:
        munge_dir = self.directory / "munge"
        self._launch(
            "munged",
            "--force",
            f"--socket={self._munge_socket}",
            f"--key-file={munge_dir / 'munge.key'}",
            f"--pid-file={self._pid_file('munged')}",
            f"--log-file={self.directory / 'log' / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        )
        self._launch("slurmctld", "-f", str(self.conf_path))
        self._launch("slurmd", "-f", str(self.conf_path))

    def _launch(self, daemon: str, *args: str) -> None:
        """Start a daemon (it forks into the background) and wait for its pid file."""
        log_file = self.directory / "log" / f"{daemon}.log"
        done = subprocess.run(
            [_require(_which(daemon)), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            start_new_session=True,
            check=False,
        )
        if done.returncode != 0:
            raise SlurmUnavailable(
                f"{daemon} failed to start (exit {done.returncode}): {(done.stderr or done.stdout).strip()}"
                f"{_tail(log_file)}"
            )
        deadline = time.monotonic() + 15
        while self._daemon_pid(daemon) is None:
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"{daemon} started but wrote no pid file{_tail(log_file)}")
            time.sleep(0.05)

    def _wait_node_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(SlurmUnavailable):
                state = self.node_state()
                if state == "idle":
                    log.info("Slurm cluster %s is up in %s", self.cluster_id, self.directory)
                    return
            time.sleep(0.1)
        raise SlurmUnavailable(
            f"node {self.node_name} did not become idle within {timeout_s:g} s (state {state!r})"
            f"{_tail(self.directory / 'log' / 'slurmctld.log')}{_tail(self.directory / 'log' / 'slurmd.log')}"
        )

    def _cancel_all_jobs(self, timeout_s: float) -> None:
        if self._daemon_pid("slurmctld") is None or not self.squeue():
            return
        self.run("scancel", f"--partition={self.partition}", check=False)
        deadline = time.monotonic() + timeout_s
        while self.squeue() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _daemon_pid(self, daemon: str) -> int | None:
        """The pid in the daemon's pid file, if that process is alive."""
        try:
            pid = int(self._pid_file(daemon).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def _stop_daemons(self, daemons: Iterable[str], timeout_s: float) -> None:
        """SIGTERM each daemon by its pid file, wait for all of them, SIGKILL those that stay."""
        procs: list[psutil.Process] = []
        for daemon in daemons:
            pid = self._daemon_pid(daemon)
            with contextlib.suppress(psutil.NoSuchProcess):
                if pid is not None:
                    proc = psutil.Process(pid)
                    proc.send_signal(signal.SIGTERM)
                    procs.append(proc)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for proc in alive:
            log.warning("pid %d ignored SIGTERM for %g s; killing it", proc.pid, timeout_s)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)

    def _kill_leftovers(self) -> list[str]:
        leftovers = self.processes()
        described = []
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                described.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]}")
                proc.kill()
        psutil.wait_procs(leftovers, timeout=5)
        return described

    def _is_ours(self, proc: psutil.Process) -> bool:
        """Started with our marker in its environment (daemons, jobs), or working in our directory
        (slurmstepd, which runs with an empty environment in slurmd's directory)."""
        try:
            if proc.environ().get(_MARKER_ENV) == self.cluster_id:
                return True
            return Path(proc.cwd()).is_relative_to(self.directory)
        except psutil.Error:
            return False


# --- helpers ------------------------------------------------------------------------------


def _which(command: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(command, path=path)


def _require(path: str | None) -> str:
    if path is None:
        raise SlurmUnavailable("a Slurm command disappeared")
    return path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path} ---\n" + "\n".join(text)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _parse_jobs(text: str) -> list[SlurmJob]:
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            jobs.append(SlurmJob(*parts))
    return jobs
