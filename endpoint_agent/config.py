"""An endpoint's configuration file (`config.yaml` in its folder), typed and validated eagerly.

Every key, its default and its meaning is listed by `taskfabric endpoint config-keys` and in
docs/endpoint-owner.md (both generated from the `help` texts below).
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

from taskfabric.endpoint_agent.providers import BlockConfig, load_block_config
from taskfabric.endpoint_agent.strategy import ScalingSettings
from taskfabric.protocol.messages import MAX_MANAGER_PREFETCH
from taskfabric.settings import load_settings, load_yaml, setting
from taskfabric.tls import client_ssl_context

__all__ = ["EndpointConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndpointConfig:
    """What an endpoint runs and how (one YAML file per endpoint)."""

    display_name: str | None = setting(
        None,
        help=(
            "A human-friendly name, shown by `endpoint status` and in the service's endpoint info "
            "(sent at registration)."
        ),
    )
    prefetch: int | None = setting(
        None,
        min=0,
        max=MAX_MANAGER_PREFETCH,
        help=(
            "Tasks each manager holds beyond its workers, to keep them busy between tasks. Default (null): "
            "max(128, 8 x scaling.workers_per_node) when at most one manager can run (provider.max_blocks x "
            "provider.nodes_per_block == 1), "
            "else 0, so long tasks never queue on one node while another node idles."
        ),
    )
    max_retries_on_system_failure: int = setting(
        1,
        min=0,
        help=(
            "How many times a task is run again after the fabric lost its run (its worker or manager died); "
            "then it fails with WORKER_LOST / MANAGER_LOST and is dead-lettered."
        ),
    )
    max_result_bytes: int = setting(
        10 * 1024 * 1024,
        min=1024,
        help="Largest pickled result (or exception) a task may return; larger is a RESULT_TOO_LARGE error.",
    )
    max_output_bytes: int = setting(
        64 * 1024,
        min=0,
        help=(
            "How much of each task's stdout, and of its stderr, is kept and returned with its result: the last "
            "this many bytes, after a `[... N bytes truncated ...]` note when cut."
        ),
    )
    started_report_delay_s: float = setting(
        0.1,
        min=0.0,
        max=3600.0,
        help=(
            "A task's start (its `running` state) is reported once it has run this long; a task that ends sooner "
            "reports only its result, which carries its start time. Saves one message per short task on every "
            "hop; 0 reports every start at once."
        ),
    )
    task_workdir: str | None = setting(
        None,
        help=(
            "Tasks run in their worker's directory, <task_workdir>/worker-<host>-<pid>, empty when each task "
            "starts; what a task leaves there is removed after it. "
            "Default (null): `tasks/` in the run folder of the manager running it "
            "(<endpoint dir>/blocks/block-<id>/<host>-<pid>/tasks). `~` is expanded."
        ),
    )
    keep_task_workdirs: bool = setting(
        False,
        help=(
            "Keep what each task leaves in its working directory, as <task_workdir>/<task id> (for debugging); "
            "these are never cleaned up."
        ),
    )
    default_walltime_s: float | None = setting(
        None, min=0.001, help="Walltime for tasks that do not set their own; null means unlimited."
    )
    heartbeat_period_s: float = setting(
        10.0, min=0.1, help="How often the interchange and its managers exchange heartbeats."
    )
    heartbeat_threshold_s: float = setting(
        60.0, min=0.3, help="A manager (or the interchange, seen from a manager) silent this long is declared lost."
    )
    status_period_s: float = setting(
        5.0,
        min=0.1,
        help=(
            "How often the agent reports its status (its heartbeat) to the forwarder. Keep it below the service's "
            "endpoint_offline_after_s (the agent warns when it is above the period the service suggests)."
        ),
    )
    consumer_check_period_s: float = setting(
        10.0,
        min=0,
        help=(
            "How often the agent checks that the broker still counts its task consumer (a queue rebuilt after a "
            "broker crash forgets it); 0: never."
        ),
    )
    task_buffer: int = setting(
        1024,
        min=1,
        help=(
            "Tasks the agent takes from the broker beyond what its managers can hold; it stops consuming above "
            "this, which bounds its memory however long the queue is."
        ),
    )
    drain_timeout_s: float = setting(
        30.0, min=0, help="On a graceful stop, how long running tasks may finish before the agent stops anyway."
    )
    cancel_grace_period_s: float = setting(
        10.0,
        min=0,
        help=(
            "When a running task is cancelled, its worker gets SIGTERM, then SIGKILL this many seconds later "
            "if it is still running (a fresh worker replaces it)."
        ),
    )
    interchange_address: str = setting(
        "127.0.0.1",
        help="The address managers connect back to; use the login node's cluster-facing address on a cluster.",
    )
    interchange_port: int = setting(0, min=0, max=65535, help="The interchange's port; 0 picks a free one.")
    interchange_encrypted: bool = setting(
        True,
        help=(
            "Encrypt the link between the interchange and its managers with CurveZMQ (a key pair per agent run; "
            "managers read the public key from the endpoint's blocks folder). Turn off only on a trusted network."
        ),
    )
    manager_command: str | None = setting(
        None,
        help=(
            "The command that starts a manager on a node; default: this agent's Python running "
            "`-m taskfabric manager run`. Set it when nodes (or containers) use another Python environment."
        ),
    )
    scaling: ScalingSettings = setting(
        default_factory=ScalingSettings,
        help=(
            "Workers per node and how blocks scale: workers_per_node (1), max_idle_time_s (120), "
            "strategy_period_s (5). See docs/endpoint-providers.md."
        ),
    )
    provider: dict[str, Any] = setting(
        default_factory=lambda: {"type": "LocalProvider"},
        help=(
            "The Parsl provider that starts blocks of managers, by class name (`type: LocalProvider`, "
            "`SlurmProvider`, ...) with its options (init_blocks, min_blocks, max_blocks, nodes_per_block, "
            "walltime, worker_init, launcher, ...). See docs/endpoint-providers.md."
        ),
    )
    container: dict[str, Any] | None = setting(
        None,
        help="Run managers and workers in a container: container_type, container_uri, container_cmd_options.",
    )
    log_level: str = setting("INFO", help="The agent's log level (DEBUG, INFO, WARNING, ERROR).")
    broker_ca_file: Path | None = setting(
        None,
        help=(
            "PEM CA certificate the agent trusts for an amqps broker. Default: the CA the forwarder sends at "
            "registration (its endpoint_broker_ca_file), else the system's trust store."
        ),
    )
    allowed_functions: list[str] | None = setting(
        None,
        help=(
            "The only function ids this endpoint runs, for every user, its owner too (null: any function). "
            "Sent at each registration, where it replaces the list set through the API; the forwarder refuses "
            "other functions at submit, and the agent answers one that reaches it anyway FUNCTION_NOT_ALLOWED "
            "without running it. See docs/endpoint-owner.md, Allow-lists."
        ),
    )

    idle_shutdown_s: float | None = setting(
        None,
        min=0.1,
        help=(
            "Stop the agent after this many seconds without a task (null: never). In a multi-user endpoint's "
            "config.yaml: the default for its user endpoint processes (their template may set its own); the "
            "parent starts a stopped one again on the user's next task."
        ),
    )
    multi_user: bool = setting(
        False,
        help=(
            "A multi-user endpoint: this agent (root, or an account allowed to switch users) takes no tasks; it "
            "starts one user endpoint process per (user, user_endpoint_config) as the local account "
            "identity_mapping gives, configured by user_config_template.yaml.j2 in the endpoint folder. See "
            "docs/endpoint-owner.md, Multi-user endpoints."
        ),
    )
    identity_mapping: dict[str, Any] | None = setting(
        None,
        help=(
            "multi_user only: how a submitter becomes a local account. `rules`: an ordered list of {source "
            "(username, identity_username or identity_sub; default username), match (a regular expression the "
            "whole value must match), output (the account; {0}: the first group, or the whole match without "
            "groups; {name}: a named group)}; or "
            "`program`: a command that reads the identity as JSON on stdin and prints the account."
        ),
    )
    deny_accounts: list[str] = setting(
        default_factory=lambda: ["root"],
        help="multi_user only: local accounts tasks never run as (uid 0 is always refused).",
    )
    min_uid: int = setting(
        1000,
        min=1,
        help=(
            "multi_user only: the lowest uid tasks may run as; system accounts below it (daemon, slurm, "
            "munge, a database's) are refused even when a mapping rule gives them."
        ),
    )
    user_endpoints_root: str | None = setting(
        None,
        help=(
            "multi_user only: where user endpoint folders go, as <root>/<account>/<id> (created for the "
            "account, mode 0700). Default (null): ~<account>/.taskfabric/user_endpoints/<id>."
        ),
    )
    user_endpoint_python: str | None = setting(
        None,
        help=(
            "multi_user only: the Python (with taskfabric installed, readable by every mapped account) that "
            "runs user endpoint processes. Default: this agent's own."
        ),
    )

    user_endpoint_environment: dict[str, str] = setting(
        default_factory=dict,
        help=(
            "multi_user only: environment variables user endpoint processes get on top of the minimal one (HOME, "
            "USER, LOGNAME, SHELL, PATH, LANG), e.g. SLURM_CONF. Never put credentials here: tasks can read them."
        ),
    )

    def __post_init__(self) -> None:
        _function_ids(self.allowed_functions)  # every item is a function id, now
        if self.heartbeat_threshold_s < 2 * self.heartbeat_period_s:
            raise ValueError(
                f"heartbeat_threshold_s ({self.heartbeat_threshold_s:g}) must be at least twice heartbeat_period_s "
                f"({self.heartbeat_period_s:g}) so one late heartbeat does not lose a manager"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.broker_ca_file is not None:
            client_ssl_context(self.broker_ca_file, key="broker_ca_file")  # exists and loads, now
        if self.multi_user:
            from taskfabric.endpoint_agent.multi_user.mapping import IdentityMapping

            IdentityMapping.from_config(  # valid, now
                self.identity_mapping, deny_accounts=self.deny_accounts, min_uid=self.min_uid
            )

    @classmethod
    def from_file(cls, path: Path) -> EndpointConfig:
        """Load and validate a config file (a `ConfigError` names the bad key and the file)."""
        return cls.from_mapping(load_yaml(path), source=str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> EndpointConfig:
        config = load_settings(cls, data, source=source)
        config.block_config(source=source)  # the provider and container sections, validated now
        return config

    def block_config(self, *, source: str = "config") -> BlockConfig:
        """The provider, container and scaling sections, validated (`ConfigError` names the key)."""
        sections: dict[str, Any] = {"provider": self.provider, "scaling": dataclasses.asdict(self.scaling)}
        if self.container is not None:
            sections["container"] = self.container
        return load_block_config(sections, source=source)

    @property
    def allowed_function_ids(self) -> frozenset[uuid.UUID] | None:
        """`allowed_functions` as ids (None: any function)."""
        return _function_ids(self.allowed_functions)

    @property
    def workers_per_node(self) -> int:
        return self.scaling.workers_per_node

    def effective_prefetch(self, max_managers: int) -> int:
        """The prefetch to give managers, resolving the default (see `prefetch`)."""
        if self.prefetch is not None:
            return self.prefetch
        return max(128, 8 * self.workers_per_node) if max_managers <= 1 else 0


def _function_ids(items: list[str] | None) -> frozenset[uuid.UUID] | None:
    if items is None:
        return None
    ids = set()
    for index, item in enumerate(items):
        try:
            ids.add(uuid.UUID(item))
        except ValueError:
            raise ValueError(f"allowed_functions[{index}]: {item!r} is not a function id") from None
    return frozenset(ids)
