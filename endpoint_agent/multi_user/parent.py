"""The multi-user parent agent: consumes no tasks; starts user endpoint processes on command.

Its loop, every pass: take start commands from the control queue (`handle_commands`), note
exited children (`UserEndpoints.reap`), report its status (its heartbeat: the endpoint shows
online). For each `StartUserEndpoint`: if that user endpoint's process runs, nothing to do;
otherwise map the identity (`IdentityMapping`), render and validate the user's config
(`UserConfigTemplate`), write the user endpoint's folder (config.yaml and connection.json, the
account's, mode 0600, in a 0700 folder the account owns) and start an ordinary agent there as
the account (`privilege.start_as`). A refused command starts nothing: the parent answers the
tasks waiting in the user endpoint's queue with the typed error (`refuse_waiting_tasks`), using
the user endpoint's own access from the command, so they end at once and nothing runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import queue
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from taskfabric import __version__
from taskfabric.broker_config import endpoint_id_of_username
from taskfabric.endpoint_agent.broker_link import EndpointBrokerLink
from taskfabric.endpoint_agent.config import EndpointConfig
from taskfabric.endpoint_agent.connection import EndpointConnection
from taskfabric.endpoint_agent.multi_user.children import STATE_FILE, UserEndpointProcess, UserEndpoints
from taskfabric.endpoint_agent.multi_user.mapping import IdentityMapping, MappingRefused, UserIdentity
from taskfabric.endpoint_agent.multi_user.privilege import (
    LocalAccount,
    create_account_folder,
    require_privilege,
    write_account_file,
)
from taskfabric.endpoint_agent.multi_user.refusal import refuse_waiting_tasks
from taskfabric.endpoint_agent.multi_user.user_config import UserConfigRefused, UserConfigTemplate
from taskfabric.endpoint_agent.paths import AgentPaths
from taskfabric.errors import AccessRefused, BrokerError, ConfigError, ErrorCode
from taskfabric.exit_codes import RET_OK
from taskfabric.protocol import EndpointStatus, StartUserEndpoint
from taskfabric.protocol.states import EndpointState
from taskfabric.transport import Delivery
from taskfabric.wake_pipe import WakePipe

__all__ = ["MultiUserAgent"]

log = logging.getLogger(__name__)

_PASS_S = 0.5


class MultiUserAgent:
    """Runs a multi-user endpoint's parent until SIGTERM/SIGINT."""

    def __init__(self, config: EndpointConfig, connection: EndpointConnection, paths: AgentPaths) -> None:
        require_privilege()
        self.config = config
        self.connection = connection
        self.paths = paths
        self.mapping = IdentityMapping.from_config(
            config.identity_mapping, deny_accounts=config.deny_accounts, min_uid=config.min_uid
        )
        self.template = UserConfigTemplate.from_folder(paths.root)
        self._wake_pipe = WakePipe()
        self.broker = EndpointBrokerLink(
            connection,
            wake=self._wake_pipe.wake,
            # its watchdog drops a control consumer the broker forgot; the next pass subscribes again
            consumer_check_period_s=config.consumer_check_period_s,
            ssl_context=connection.broker_ssl_context(config.broker_ca_file),
        )
        python = config.user_endpoint_python or sys.executable
        self.children = UserEndpoints(
            paths.root / STATE_FILE, [python, "-m", "taskfabric"], environment=config.user_endpoint_environment
        )
        self.stopping = False
        self._last_status = 0.0
        self._status_period_s = min(config.status_period_s, connection.status_period_s or config.status_period_s)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("multi-user endpoint %s starting (taskfabric %s)", self.connection.endpoint_id, __version__)
        try:
            self.broker.start()
        except AccessRefused:
            raise
        except BrokerError as exc:  # the transport keeps trying; so does `step`
            log.warning("broker not reachable yet (%s); retrying in the background", exc)
        adopted = self.children.recover()
        if adopted:
            log.info("took over %d user endpoint processes an earlier run left running", adopted)
        self.children.save()
        try:
            while not self.stopping:
                self.step()
                self._wait(_PASS_S)
        finally:
            self.close()
        return RET_OK

    def step(self) -> None:
        if not self.broker.subscribed_control:
            try:
                self.broker.subscribe(tasks=False)
            except BrokerError as exc:
                log.warning("cannot consume the control queue yet: %s", exc)
        self.handle_commands()
        if not self.stopping:
            self.children.restart_exited(time.time())
        self.report_status(time.monotonic())

    def _wait(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self._wake_pipe.read_fd], [], [], timeout_s)
        if ready:
            self._wake_pipe.drain()

    def close(self) -> None:
        log.info("stopping: stopping %d user endpoint processes", len(self.children.processes))
        self.children.stop_all(timeout_s=self.config.drain_timeout_s + 10.0)
        try:
            self.broker.publish_status(self._status(EndpointState.OFFLINE)).result(timeout=5.0)
        except Exception as exc:  # BrokerError or no confirm: the report goes stale instead
            log.warning("could not report offline: %s", exc)
        self.broker.close()
        self._wake_pipe.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._wake_pipe.wake()

    # --- commands -------------------------------------------------------------------------

    def handle_commands(self) -> None:
        while True:
            try:
                command, delivery = self.broker.commands.get_nowait()
            except queue.Empty:
                return
            self.handle(command, delivery)

    def handle(self, command: StartUserEndpoint, delivery: Delivery) -> None:
        """Start the command's user endpoint unless it runs; refuse it with a typed error."""
        try:
            if command.parent_endpoint_id != self.connection.endpoint_id:
                log.warning("ignoring a start command for another parent (%s)", command.parent_endpoint_id)
                return
            if not _from_the_service(delivery):
                log.warning("ignoring a start command published by %r, not by the service", delivery.user_id)
                return
            known = self.children.processes.get(command.endpoint_id)
            if known is not None:
                known.submits += 1
                known.last_command_at = time.time()
                if known.alive:  # it takes its tasks; keep a fresh key for its next start
                    self._save_connection(known.folder, known.account, command)
                    return
            self._start(command)
        except MappingRefused as refused:
            self._refuse(command, refused.code, refused.message)
        except UserConfigRefused as refused:
            self._refuse(command, ErrorCode.USER_CONFIG_INVALID, str(refused))
        except Exception as exc:  # the tasks stay queued; the next command tries again
            log.exception("could not start user endpoint %s: %s", command.endpoint_id, exc)
        finally:
            self.broker.ack(delivery)
            self.children.save()

    def _start(self, command: StartUserEndpoint) -> None:
        identity = UserIdentity(
            username=command.user,
            user_id=str(command.user_id),
            identity_username=command.identity_username,
            identity_sub=command.identity_sub,
        )
        account = LocalAccount.of(self.mapping.account_for(identity))
        variables = _variables(command.user_endpoint_config_json)
        rendered = self._child_config(variables)
        folder = self._folder(account, command)
        write_account_file(folder, "config.yaml", json.dumps(rendered, indent=2), account)
        if not self._save_connection(folder, account, command) and not (folder / "connection.json").exists():
            raise RuntimeError("no broker access for it yet: it starts with the next start command that brings one")
        entry = UserEndpointProcess(
            endpoint_id=command.endpoint_id,
            user=command.user,
            account=account,
            folder=folder,
            config_digest=hashlib.sha256(command.user_endpoint_config_json.encode()).hexdigest()[:16],
            submits=1,
            last_command_at=time.time(),
            idle_shutdown_s=rendered.get("idle_shutdown_s"),
        )
        if not self.children.adopt(entry):
            self.children.start(entry)

    def _save_connection(self, folder: Path, account: LocalAccount, command: StartUserEndpoint) -> bool:
        """Write the command's broker access for the user endpoint's next start; False when the
        command has none (the user endpoint reported online when it was sent)."""
        if command.broker is None:
            return False
        connection = EndpointConnection.of(command.endpoint_id, command.broker)
        write_account_file(folder, "connection.json", _connection_json(connection), account)
        return True

    def _child_config(self, variables: dict[str, Any]) -> dict[str, Any]:
        rendered = self.template.render(variables)
        rendered.setdefault("idle_shutdown_s", self.config.idle_shutdown_s)
        rendered.setdefault("status_period_s", self.config.status_period_s)
        if self.config.allowed_functions is not None:  # the parent's allow-list binds every user endpoint
            rendered["allowed_functions"] = list(self.config.allowed_functions)
        try:
            EndpointConfig.from_mapping(rendered, source="the rendered user config")
        except ConfigError as exc:
            raise UserConfigRefused(exc.key or "user_endpoint_config", str(exc)) from None
        return rendered

    def _folder(self, account: LocalAccount, command: StartUserEndpoint) -> Path:
        name = str(command.endpoint_id)
        if self.config.user_endpoints_root:
            root = Path(self.config.user_endpoints_root).expanduser()
            root.mkdir(parents=True, exist_ok=True, mode=0o755)
            return create_account_folder(root, [account.name, name], account)
        return create_account_folder(account.home, [".taskfabric", "user_endpoints", name], account)

    def _refuse(self, command: StartUserEndpoint, code: ErrorCode, message: str) -> None:
        text = f"multi-user endpoint {self.connection.endpoint_id}: {message}"
        log.warning("refused user endpoint %s of %s: %s", command.endpoint_id, command.user, text)
        self.children.note_refused(command.endpoint_id, command.user, code.value, message)
        if command.broker is None:  # never online, so never without access: nothing to answer with
            return
        connection = EndpointConnection.of(command.endpoint_id, command.broker)
        threading.Thread(
            target=refuse_waiting_tasks,
            args=(connection, code, text),
            kwargs={"ssl_context": connection.broker_ssl_context(self.config.broker_ca_file)},
            name="refuse-tasks",
            daemon=True,
        ).start()

    # --- status ---------------------------------------------------------------------------

    def report_status(self, now: float) -> None:
        if now - self._last_status < self._status_period_s or not self.broker.connected:
            return
        self._last_status = now
        self.broker.publish_status(self._status(EndpointState.ONLINE))

    def _status(self, state: EndpointState) -> EndpointStatus:
        running = sum(1 for entry in self.children.processes.values() if entry.alive)
        return EndpointStatus(
            endpoint_id=self.connection.endpoint_id,
            sent_at=time.time(),
            state=state.value,
            heartbeat_period_s=self._status_period_s,
            hostname=socket.gethostname(),
            python_version=platform.python_version(),
            agent_version=__version__,
            scaling=f"multi-user: {running} user endpoint processes running",
        )


def _from_the_service(delivery: Delivery) -> bool:
    """Published by the service's own broker user (the broker checks `user_id`), never by an
    endpoint's: a user endpoint's credentials may publish to the tasks exchange (to hand tasks
    back), so a command from one must not make the parent start processes."""
    return bool(delivery.user_id) and endpoint_id_of_username(delivery.user_id) is None


def _variables(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise UserConfigRefused("user_endpoint_config", "not a JSON object") from None
    if not isinstance(value, dict):
        raise UserConfigRefused("user_endpoint_config", "not a JSON object")
    return value


def _connection_json(connection: EndpointConnection) -> str:
    data = dataclasses.asdict(connection)
    data["endpoint_id"] = str(connection.endpoint_id)
    return json.dumps(data, indent=2)
