"""Revocation that bites, on a real forwarder process (on SQLite and PostgreSQL) and the real broker:
revoked tokens close their open results streams, disabled and deleted users are refused with
typed errors, deleting a user cuts its endpoints' broker connections and fails its waiting tasks,
tokens expire and are listed without their secret, and the audit log records it all.

The forwarder of this module re-checks tokens every second (`auth.cache_max_age_s: 1`), so the
tests wait seconds, not a minute."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from sqlalchemy import inspect, select
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from taskfabric.broker_config import ManagementClient
from taskfabric.errors import TaskfabricError
from taskfabric.forwarder import ForwarderSettings, create_token, create_user
from taskfabric.forwarder.admin import (
    delete_user,
    disable_user,
    enable_user,
    list_tokens,
    list_users,
    parse_duration,
    revoke_tokens,
)
from taskfabric.forwarder.auth import hash_token
from taskfabric.forwarder.records import NewTask, TaskStatus
from taskfabric.forwarder.store import Failure, Store
from taskfabric.forwarder.store.schema import MIGRATIONS, tokens
from taskfabric.forwarder.testing import FakeEndpoint, ForwarderApi, ForwarderProcess
from taskfabric.testing import BrokerUnderTest, unique_name, wait_until

#: the close code of a stream whose token is no longer accepted
POLICY_VIOLATION = 1008


class Quick:
    """The module's forwarder and helpers around it."""

    def __init__(self, process: ForwarderProcess, settings: ForwarderSettings, broker: BrokerUnderTest) -> None:
        self.process = process
        self.settings = settings
        self.broker = broker
        self.apis: list[ForwarderApi] = []

    @property
    def url(self) -> str:
        return self.process.url

    def new_user(self) -> tuple[str, ForwarderApi]:
        name = unique_name("rev")
        create_user(self.settings, name)
        api = ForwarderApi(self.url, create_token(self.settings, name), username=name)
        self.apis.append(api)  # closed after the test
        return name, api

    def close_apis(self) -> None:
        while self.apis:
            self.apis.pop().close()

    def stream(self, token: str, *, query: str = "") -> ClientConnection:
        url = self.url.replace("http://", "ws://") + "/v1/results/ws" + query
        return connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=15)

    def management(self) -> ManagementClient:
        assert self.broker.management_url
        return ManagementClient(self.broker.management_url)

    def audit_records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.settings.audit_log_path.read_text().splitlines()]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def quick_forwarder(
    request: pytest.FixtureRequest, broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Quick]:
    """The module's forwarder on each database backend. On SQLite the audit log is in its default
    place (next to the store); on PostgreSQL it is named, so that this process's admin functions and
    the forwarder process write the same file."""
    assert broker.management_url, "deleting users needs the broker's management API"
    folder = tmp_path_factory.mktemp(f"revocation-{request.param}")
    if request.param == "postgres":
        store: dict[str, Any] = {
            "database_url": request.getfixturevalue("postgres_url"),
            "audit_log_file": str(folder / "audit" / "audit.jsonl"),
        }
    else:
        store = {"database_url": f"sqlite:///{folder / 'store' / 'forwarder.db'}"}
    values = {
        "status_period_s": 0.5,
        "endpoint_offline_after_s": 2.0,
        "endpoint_sync_period_s": 1.0,
        "confirm_timeout_s": 5.0,
        **store,
        "amqp_url": broker.amqp_url,
        "management_url": broker.management_url,
        "topology_prefix": unique_name("fw-rev"),
        "auth": {"cache_max_age_s": 1.0},
    }
    with ForwarderProcess(folder / "process", values) as process:
        yield Quick(process, ForwarderSettings.from_mapping(values), broker)


@pytest.fixture
def quick(quick_forwarder: Quick) -> Iterator[Quick]:
    """The module's forwarder; the API sessions a test opens are closed after it."""
    yield quick_forwarder
    quick_forwarder.close_apis()


def _closed_by_server(connection: ClientConnection, *, timeout_s: float = 15.0) -> ConnectionClosed:
    """Wait (bounded) for the server to close the connection; the close frame's exception."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            connection.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed
        except TimeoutError:
            break
    raise AssertionError("the server did not close the results stream")


def _ping(connection: ClientConnection, marker: int) -> None:
    connection.send(msgpack.packb({"ping": marker}))
    assert msgpack.unpackb(connection.recv(timeout=15)) == {"pong": marker}


def _error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


# --- streams ------------------------------------------------------------------------------


def test_revoking_a_token_closes_the_stream_opened_with_it(quick: Quick) -> None:
    name, alice = quick.new_user()
    _, bob = quick.new_user()
    with quick.stream(alice.token) as alice_stream, quick.stream(bob.token) as bob_stream:
        _ping(alice_stream, 1)
        assert revoke_tokens(quick.settings, name) == 1
        closed = _closed_by_server(alice_stream)
        assert closed.rcvd is not None and closed.rcvd.code == POLICY_VIOLATION
        assert closed.rcvd.reason.startswith("TOKEN_REVOKED")
        _ping(bob_stream, 2)  # another tenant's stream is untouched
    assert alice.http.get("/v1/whoami").status_code == 401


def test_disabling_a_user_closes_its_stream_and_refuses_it_with_403_until_enabled(quick: Quick) -> None:
    name, alice = quick.new_user()
    assert alice.http.get("/v1/whoami").status_code == 200
    with quick.stream(alice.token) as stream:
        _ping(stream, 1)
        disable_user(quick.settings, name)
        closed = _closed_by_server(stream)
        assert closed.rcvd is not None and closed.rcvd.code == POLICY_VIOLATION
        assert closed.rcvd.reason.startswith("USER_DISABLED")
    refused = alice.http.get("/v1/whoami")
    assert refused.status_code == 403 and _error_code(refused) == "USER_DISABLED"
    with pytest.raises(InvalidStatus) as handshake:
        quick.stream(alice.token)
    assert handshake.value.response.status_code == 403
    assert any(user.username == name and user.disabled_at for user in list_users(quick.settings))
    enable_user(quick.settings, name)
    wait_until(lambda: alice.http.get("/v1/whoami").status_code == 200, timeout_s=10, what="re-enabled user accepted")


# --- tokens -------------------------------------------------------------------------------


def test_expired_tokens_are_refused_with_a_typed_401(quick: Quick) -> None:
    name, _ = quick.new_user()
    token = create_token(quick.settings, name, expires_in_s=1.5)
    with ForwarderApi(quick.url, token) as api:
        assert api.http.get("/v1/whoami").status_code == 200
        wait_until(lambda: api.http.get("/v1/whoami").status_code == 401, timeout_s=10, what="token expiry")
        assert _error_code(api.http.get("/v1/whoami")) == "TOKEN_EXPIRED"
    with pytest.raises(TaskfabricError, match="positive"):
        create_token(quick.settings, name, expires_in_s=0)
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90m") == 5400 and parse_duration("45") == 45
    for bad in ("", "soon", "-1d", "0h", "3 parsecs"):
        with pytest.raises(TaskfabricError, match="not a duration"):
            parse_duration(bad)


def test_list_tokens_shows_ids_prefixes_labels_and_last_use_never_secrets(quick: Quick) -> None:
    name, alice = quick.new_user()
    second = create_token(quick.settings, name, description="laptop", expires_in_s=86400)
    assert alice.http.get("/v1/whoami").status_code == 200  # the first token is used, the second not
    first_record, second_record = list_tokens(quick.settings, name)
    assert first_record.prefix == alice.token[:8] and second_record.prefix == second[:8]
    assert second_record.label == "laptop" and second_record.expires_at is not None
    assert first_record.last_used_at is not None and second_record.last_used_at is None
    assert first_record.expires_at is None and first_record.token_id != second_record.token_id
    shown = repr(list_tokens(quick.settings, name))
    for secret in (alice.token, second, hash_token(alice.token), hash_token(second)):
        assert secret not in shown
    # revoking by id revokes that token only
    assert revoke_tokens(quick.settings, name, token_id=second_record.token_id) == 1
    assert [record.token_id for record in list_tokens(quick.settings, name)] == [first_record.token_id]
    with pytest.raises(TaskfabricError, match="not one of"):
        revoke_tokens(quick.settings, name, token_id=second_record.token_id)


# --- deleting users -----------------------------------------------------------------------


def test_deleting_a_user_cuts_its_endpoint_broker_connection_and_fails_its_waiting_tasks(quick: Quick) -> None:
    name, alice = quick.new_user()
    _, bob = quick.new_user()
    registration = alice.register_endpoint("lab")
    function_id = alice.register_function(b"f" + uuid.uuid4().bytes)
    task_ids = alice.submit(registration["endpoint_id"], function_id, [b"1", b"2"])
    bob_registration = bob.register_endpoint("lab")
    with (
        contextlib.closing(quick.management()) as management,
        FakeEndpoint(registration) as endpoint,
        FakeEndpoint(bob_registration) as bob_endpoint,
    ):
        # the management API lists connections once its statistics caught up
        wait_until(lambda: management.connections_of(endpoint.username), timeout_s=30, what="the connection listed")
        shutdown = delete_user(quick.settings, name)
        assert (shutdown.endpoints, shutdown.failed_tasks) == (1, 2)
        wait_until(lambda: not endpoint.transport.connected, timeout_s=15, what="the broker closing the connection")
        assert not management.user_exists(endpoint.username)
        assert management.connections_of(endpoint.username) == []
        assert bob_endpoint.transport.connected  # another tenant's endpoint keeps its connection
    with Store.open(quick.settings.store_url) as store:
        stored = store.tasks.get_many([uuid.UUID(task_id) for task_id in task_ids])
        assert store.users.find(name) is None and store.endpoints.get(uuid.UUID(registration["endpoint_id"])) is None
    assert {record.status for record in stored.values()} == {TaskStatus.FAILED}
    assert {record.error_code for record in stored.values()} == {"USER_DELETED"}
    # refused once the forwarder's cache of the token (1 s here) has expired
    refused = wait_until(
        lambda: (answer := alice.http.get("/v1/whoami")).status_code != 200 and answer,
        timeout_s=10,
        what="the deleted user's token refused",
    )
    assert refused.status_code == 401 and _error_code(refused) == "INVALID_TOKEN"
    with pytest.raises(TaskfabricError, match="no local user"):
        delete_user(quick.settings, name)


# --- logs and the audit log ---------------------------------------------------------------


def test_refused_handshakes_log_at_info_with_the_peer_and_never_the_token(quick: Quick) -> None:
    unknown = "tf_" + "x" * 43
    logged_before = quick.process.log_file.read_text()
    with pytest.raises(InvalidStatus) as refused:
        quick.stream(unknown, query=f"?token={unknown}")
    assert refused.value.response.status_code == 401
    wait_until(
        lambda: "refused a results stream handshake from 127.0.0.1:" in quick.process.log_file.read_text(),
        timeout_s=10,
        what="the refusal in the log",
    )
    new_lines = quick.process.log_file.read_text()[len(logged_before) :].splitlines()
    refusal = next(line for line in new_lines if "refused a results stream handshake" in line)
    assert " INFO " in refusal and "INVALID_TOKEN" in refusal
    assert not [line for line in new_lines if " ERROR " in line]
    assert unknown not in quick.process.log_file.read_text()


def test_the_audit_log_records_logins_token_user_and_endpoint_changes(quick: Quick) -> None:
    name, alice = quick.new_user()
    assert alice.http.get("/v1/whoami").status_code == 200
    registration = alice.register_endpoint("audited")
    assert alice.http.delete(f"/v1/endpoints/{registration['endpoint_id']}").status_code == 204
    with ForwarderApi(quick.url, "tf_" + "y" * 43) as stranger:
        assert stranger.http.get("/v1/whoami").status_code == 401
    revoke_tokens(quick.settings, name)
    path = quick.settings.audit_log_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    records = quick.audit_records()
    assert all(set(record) == {"time", "user", "peer", "action", "object", "outcome"} for record in records)
    mine = [record for record in records if name in record["user"] or name in record["object"]]
    actions = [(record["action"], record["outcome"]) for record in mine]
    for expected in ("create_user", "create_token", "login", "register_endpoint", "delete_endpoint", "revoke_token"):
        assert (expected, "ok") in actions, expected
    login = next(record for record in mine if record["action"] == "login")
    assert login["user"] == name and login["peer"].startswith("127.0.0.1:")
    endpoint_records = [record for record in mine if record["action"].endswith("_endpoint")]
    assert {record["object"] for record in endpoint_records} == {f"endpoint:{registration['endpoint_id']}"}
    assert any(record["action"] == "login_refused" and record["outcome"] == "INVALID_TOKEN" for record in records)
    text = path.read_text()
    assert alice.token not in text and hash_token(alice.token) not in text and "tf_yyyy" not in text


# --- the store ----------------------------------------------------------------------------


def test_the_revocation_migration_is_idempotent_and_names_older_tokens(store: Store) -> None:
    user = store.users.create(unique_name("old"))
    old_hash = uuid.uuid4().hex * 2
    with store.engine.begin() as connection:  # a token as a v2 store held it: no id, no prefix
        connection.execute(
            tokens.insert().values(token_hash=old_hash, user_id=user.user_id, description="old", created_at=1.0)
        )
    # by name: other branches append a v3 too, and migrations are renumbered when they meet
    (migration,) = [step for step in MIGRATIONS if step.__name__ == "_v3_revocation"]
    for _ in range(2):
        with store.engine.begin() as connection:
            migration(connection)
    with store.engine.connect() as connection:
        token_id = connection.execute(select(tokens.c.token_id).where(tokens.c.token_hash == old_hash)).scalar()
        indexes = {index["name"] for index in inspect(connection).get_indexes("tokens")}
    assert token_id and "ix_tokens_token_id" in indexes
    (listed,) = store.users.list_tokens(user.user_id)
    assert (listed.token_id, listed.prefix, listed.label) == (token_id, "", "old")


def test_failing_a_users_tasks_leaves_other_users_and_finished_tasks_alone(store: Store) -> None:
    alice, bob = (store.users.create(unique_name("u")).user_id for _ in range(2))
    endpoint = uuid.uuid4()
    ids: dict[uuid.UUID, list[uuid.UUID]] = {}
    for owner in (alice, bob):
        new = [NewTask(task_id=uuid.uuid4(), function_id=uuid.uuid4(), payload=b"") for _ in range(3)]
        store.tasks.insert(
            owner_id=owner, endpoint_id=endpoint, client_python="3.11.7", new_tasks=new, created_at=time.time()
        )
        ids[owner] = [task.task_id for task in new]
    failed = store.tasks.fail_owner(alice, Failure("USER_DELETED", "gone"), now=5.0)
    assert {record.task_id for record in failed} == set(ids[alice])
    assert store.tasks.fail_owner(alice, Failure("USER_DELETED", "again"), now=6.0) == []
    stored = store.tasks.get_many(ids[alice] + ids[bob])
    assert {stored[task_id].error_message for task_id in ids[alice]} == {"gone"}
    assert {stored[task_id].status for task_id in ids[bob]} == {TaskStatus.WAITING}
