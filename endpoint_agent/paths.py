"""Where an endpoint keeps its files: `AgentPaths`, kept apart from the agent's loop so that the
processes that only need the paths (the supervisor, `taskfabric endpoint` commands) do not import
the agent and its scheduler providers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["AgentPaths"]


@dataclasses.dataclass(frozen=True)
class AgentPaths:
    """Where an endpoint keeps its files (all under one folder)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def connection(self) -> Path:
        return self.root / "connection.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def blocks(self) -> Path:
        return self.root / "blocks"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def pid(self) -> Path:
        return self.root / "agent.pid"

    @property
    def problem(self) -> Path:
        """While it exists: what keeps the running agent from working (e.g. refused credentials)."""
        return self.root / "agent.problem"

    @property
    def supervisor_pid(self) -> Path:
        return self.root / "supervisor.pid"
