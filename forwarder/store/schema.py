"""The store's tables (SQLAlchemy Core) and its versioned migrations.

Ids are UUIDs (native on PostgreSQL, 32 hex characters on SQLite); timestamps are float seconds
since the epoch, as in the API. Tasks keep their endpoint and function ids without foreign keys:
a task outlives a deleted endpoint or function (it ends as `ENDPOINT_DELETED`, or still runs).
Task payloads are not stored: they travel in the broker's task messages.

Migrations are numbered functions run in order inside one transaction each; `schema_version`
holds the last one applied. Add a migration by appending to `MIGRATIONS`, never by editing one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    inspect,
    select,
)

__all__ = [
    "MIGRATIONS",
    "dead_letters",
    "endpoint_grants",
    "endpoints",
    "function_grants",
    "functions",
    "globus_compute_task_groups",
    "group_members",
    "groups",
    "leases",
    "metadata",
    "migrate",
    "result_bytes_daily",
    "schema_version",
    "sharing_audit",
    "submissions_daily",
    "tasks",
    "tokens",
    "users",
]

log = logging.getLogger(__name__)

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

users = Table(
    "users",
    metadata,
    Column("user_id", Uuid, primary_key=True),
    Column("username", String(256), nullable=False),
    Column("auth", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("disabled_at", Float),  # schema v3 (revocation): a disabled user's tokens are refused
    UniqueConstraint("auth", "username", name="uq_users_auth_username"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 hex: the token itself is never stored
    Column("user_id", Uuid, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("description", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # schema v3 (revocation): a public id to name the token by, its first characters (to tell
    # tokens apart; never enough to use), when it expires and when it was last accepted
    Column("token_id", String(32)),
    Column("prefix", String(16)),
    Column("expires_at", Float),
    Column("last_used_at", Float),
)

functions = Table(
    "functions",
    metadata,
    Column("function_id", Uuid, primary_key=True),
    Column("owner_id", Uuid, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("python_version", Text, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    # schema v6 (sharing): what the owner says it does, and whether every user may run it
    Column("description", Text),
    Column("public", Boolean),
    UniqueConstraint("owner_id", "content_hash", name="uq_functions_owner_hash"),
)

endpoints = Table(
    "endpoints",
    metadata,
    Column("endpoint_id", Uuid, primary_key=True),
    Column("owner_id", Uuid, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("queue_secret", String(64), nullable=False),
    Column("broker_username", String(64), nullable=False),
    Column("metadata", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("registered_at", Float, nullable=False),
    # the last status report
    Column("state", String(16)),
    Column("last_heartbeat_at", Float),
    Column("managers", Integer, nullable=False, default=0),
    Column("workers", Integer, nullable=False, default=0),
    Column("idle_workers", Integer, nullable=False, default=0),
    Column("outstanding_tasks", Integer, nullable=False, default=0),
    Column("pending_blocks", Integer, nullable=False, default=0),
    Column("running_blocks", Integer, nullable=False, default=0),
    Column("hostname", Text, nullable=False, default=""),
    Column("python_version", Text, nullable=False, default=""),
    Column("agent_version", Text, nullable=False, default=""),
    # schema v2: when a broken task queue was last rebuilt (tasks it held are reconciled, see
    # forwarder/queue_health.py)
    Column("queue_rebuilt_at", Float),
    # schema v2: the scaling strategy's last decision, as the agent reported it
    Column("scaling", Text),
    Column("status_reason", Text),  # v2: why the agent reports itself degraded
    # schema v3 (dashboard): the agent's live blocks with their scheduler job ids, as JSON
    Column("blocks", Text),
    # schema v6 (sharing): every authenticated user may submit; the functions it runs (a JSON list
    # of ids; NULL: any function its users may run)
    Column("public", Boolean),
    Column("allowed_functions", Text),
    UniqueConstraint("owner_id", "name", name="uq_endpoints_owner_name"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("owner_id", Uuid, nullable=False),
    Column("endpoint_id", Uuid, nullable=False),
    Column("function_id", Uuid, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("client_python", Text, nullable=False),
    Column("result", LargeBinary),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("error_traceback", Text),
    Column("error_exception_type", Text),
    Column("error_exception", LargeBinary),
    Column("worker_python", Text),
    Column("received_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("attempts", Integer, nullable=False, default=0),
    # schema v2: task groups, captured output, cancellation
    Column("task_group_id", Uuid),
    Column("stdout", Text),
    Column("stderr", Text),
    Column("cancel_requested_at", Float),
    # schema v8 (issue 15, blob store): a result above `blob_threshold_bytes` is kept in the blob
    # store; `result` is then NULL and these name the blob, its size and its sha256 (hex)
    Column("result_blob", Text),
    Column("result_size", BigInteger),
    Column("result_sha256", String(64)),
    Index("ix_tasks_completed_at", "completed_at"),
    # not (endpoint_id, status): finishing a task then leaves this index alone
    Index("ix_tasks_endpoint", "endpoint_id"),
)


#: dead-lettered task messages, kept for operators (`taskfabric admin dead-letters`)
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("dead_letter_id", Uuid, primary_key=True),
    Column("task_id", Uuid),
    Column("endpoint_id", Uuid),
    Column("owner_id", Uuid),
    Column("reason", Text, nullable=False),
    Column("deliveries", Integer, nullable=False, default=0),
    Column("queue", Text, nullable=False, default=""),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_dead_letters_created_at", "created_at"),
)


def _v1_initial(connection: Connection) -> None:
    # creates the tables as they are now; later migrations therefore check what already exists
    metadata.create_all(connection, tables=[users, tokens, functions, endpoints, tasks])


_V2_TASK_COLUMNS = ("task_group_id", "stdout", "stderr", "cancel_requested_at")
_V2_ENDPOINT_COLUMNS = ("queue_rebuilt_at", "scaling", "status_reason")


def _add_missing_columns(
    connection: Connection, inspector: Any, name: str, table: Table, columns: tuple[str, ...]
) -> None:
    present = {column["name"] for column in inspector.get_columns(name)}
    for column in columns:
        if column not in present:
            type_sql = table.c[column].type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {column} {type_sql}")


def _v2_lifecycle(connection: Connection) -> None:
    """Task groups, captured output, cancellation, listing indexes, kept dead letters, endpoints'
    scaling decisions and the reason an endpoint reports itself degraded."""
    inspector = inspect(connection)
    _add_missing_columns(connection, inspector, "tasks", tasks, _V2_TASK_COLUMNS)
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("ALTER TABLE tasks ALTER COLUMN status TYPE VARCHAR(16)")
    _add_missing_columns(connection, inspector, "endpoints", endpoints, _V2_ENDPOINT_COLUMNS)
    indexes = {index["name"] for index in inspector.get_indexes("tasks")}
    for index in (_IX_OWNER_CREATED, _IX_GROUP):
        if index.name not in indexes:
            index.create(connection)
    dead_letters.create(connection, checkfirst=True)


#: listing a user's tasks newest first, keyset-paginated on (created_at, task_id)
_IX_OWNER_CREATED = Index("ix_tasks_owner_created", tasks.c.owner_id, tasks.c.created_at, tasks.c.task_id)
_IX_GROUP = Index("ix_tasks_group", tasks.c.task_group_id)


_V3_TOKEN_COLUMNS = ("token_id", "prefix", "expires_at", "last_used_at")
_IX_TOKEN_ID = Index("ix_tokens_token_id", tokens.c.token_id, unique=True)


def _v3_revocation(connection: Connection) -> None:
    """Revocation that bites: token ids, prefixes, expiry and last use; disabled users.
    Idempotent (other branches append a v3 too and are renumbered on merge): it adds only what is
    missing, and gives ids only to tokens that have none."""
    inspector = inspect(connection)
    _add_missing_columns(connection, inspector, "tokens", tokens, _V3_TOKEN_COLUMNS)
    _add_missing_columns(connection, inspector, "users", users, ("disabled_at",))
    unnamed = connection.execute(select(tokens.c.token_hash).where(tokens.c.token_id.is_(None))).scalars().all()
    for token_hash in unnamed:
        connection.execute(
            tokens.update().where(tokens.c.token_hash == token_hash).values(token_id=uuid.uuid4().hex, prefix="")
        )
    if _IX_TOKEN_ID.name not in {index["name"] for index in inspector.get_indexes("tokens")}:
        _IX_TOKEN_ID.create(connection)


#: schema v4 (quotas): result bytes stored per user and UTC day (days since the epoch), for
#: `quotas.max_result_bytes_per_day`; rows older than yesterday are pruned with expired tasks
result_bytes_daily = Table(
    "result_bytes_daily",
    metadata,
    Column("owner_id", Uuid, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("result_bytes", BigInteger, nullable=False, default=0),
)

#: once-only background jobs of forwarder replicas: who holds each job's lease, until when
#: (forwarder/leases.py)
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(256), nullable=False),
    Column("expires_at", Float, nullable=False),
)

#: a user's unfinished tasks (`completed_at` IS NULL), counted at every submit for
#: `quotas.max_pending_tasks_per_user` without reading their finished ones
_IX_OWNER_COMPLETED = Index("ix_tasks_owner_completed", tasks.c.owner_id, tasks.c.completed_at)


def _v4_quotas(connection: Connection) -> None:
    """Per-user quotas: the daily result-bytes table and the unfinished-tasks-per-owner index.
    Idempotent (it checks what exists)."""
    result_bytes_daily.create(connection, checkfirst=True)
    indexes = {index["name"] for index in inspect(connection).get_indexes("tasks")}
    if _IX_OWNER_COMPLETED.name not in indexes:
        _IX_OWNER_COMPLETED.create(connection)


def _v5_dashboard(connection: Connection) -> None:
    """Endpoints' live blocks with their scheduler job ids (shown by the web dashboard)."""
    _add_missing_columns(connection, inspect(connection), "endpoints", endpoints, ("blocks",))


# --- schema v6 (sharing): groups, grants on endpoints and functions, their audit -------------

#: groups of users; the owner is also a member (role "owner"), so membership is one table
groups = Table(
    "groups",
    metadata,
    Column("group_id", Uuid, primary_key=True),
    Column("owner_id", Uuid, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("owner_id", "name", name="uq_groups_owner_name"),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", Uuid, ForeignKey("groups.group_id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Uuid, ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),  # owner | manager | member
    Column("added_at", Float, nullable=False),
    Column("added_by", Uuid),
    Index("ix_group_members_user", "user_id"),
)

#: who besides the owner may use an endpoint: a user or a group ("principal"), with a role
#: (submit | manage) and optional limits of their own. No foreign key on the principal (it is
#: one of two tables): deleting a group or a user deletes its grants in the same transaction.
endpoint_grants = Table(
    "endpoint_grants",
    metadata,
    Column("endpoint_id", Uuid, ForeignKey("endpoints.endpoint_id", ondelete="CASCADE"), primary_key=True),
    Column("principal_kind", String(8), primary_key=True),  # user | group
    Column("principal_id", Uuid, primary_key=True),
    Column("role", String(16), nullable=False),
    Column("max_waiting_tasks", Integer),
    Column("max_tasks_per_day", Integer),
    Column("granted_at", Float, nullable=False),
    Column("granted_by", Uuid, nullable=False),
    Index("ix_endpoint_grants_principal", "principal_id"),
)

#: who besides the owner may run a function (by id) and read its metadata (never its body)
function_grants = Table(
    "function_grants",
    metadata,
    Column("function_id", Uuid, ForeignKey("functions.function_id", ondelete="CASCADE"), primary_key=True),
    Column("principal_kind", String(8), primary_key=True),  # user | group
    Column("principal_id", Uuid, primary_key=True),
    Column("granted_at", Float, nullable=False),
    Column("granted_by", Uuid, nullable=False),
    Index("ix_function_grants_principal", "principal_id"),
)

#: sharing changes and cross-user submissions: who (actor), when, what (action + JSON detail)
sharing_audit = Table(
    "sharing_audit",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("at", Float, nullable=False),
    Column("actor_id", Uuid, nullable=False),
    Column("action", String(32), nullable=False),
    Column("endpoint_id", Uuid),
    Column("function_id", Uuid),
    Column("group_id", Uuid),
    Column("detail", Text, nullable=False, default="{}"),
    Index("ix_sharing_audit_endpoint", "endpoint_id", "at"),
    Index("ix_sharing_audit_function", "function_id", "at"),
)

#: tasks a user submitted to another user's endpoint per UTC day (days since the epoch), for a
#: grant's `max_tasks_per_day` (counted at submit; old days pruned with expired tasks)
submissions_daily = Table(
    "submissions_daily",
    metadata,
    Column("endpoint_id", Uuid, primary_key=True),
    Column("user_id", Uuid, primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("tasks", BigInteger, nullable=False, default=0),
)

#: Globus Compute task groups with a result queue (`forwarder/globus_compute/`): the task groups whose
#: results are also published, in globus-compute-common's format, to their owner's AMQP queue
globus_compute_task_groups = Table(
    "globus_compute_task_groups",
    metadata,
    Column("task_group_id", Uuid, primary_key=True),
    Column("owner_id", Uuid, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("queue", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

#: a user's unfinished tasks on one endpoint, counted for a grant's `max_waiting_tasks`
_IX_OWNER_ENDPOINT_COMPLETED = Index(
    "ix_tasks_owner_endpoint_completed", tasks.c.owner_id, tasks.c.endpoint_id, tasks.c.completed_at
)


def _v6_sharing(connection: Connection) -> None:
    """Groups, endpoint and function grants, public endpoints and functions, function allow-lists,
    the sharing audit and per-grant daily counts. Idempotent (it checks what exists)."""
    inspector = inspect(connection)
    _add_missing_columns(connection, inspector, "functions", functions, ("description", "public"))
    _add_missing_columns(connection, inspector, "endpoints", endpoints, ("public", "allowed_functions"))
    for table in (groups, group_members, endpoint_grants, function_grants, sharing_audit, submissions_daily):
        table.create(connection, checkfirst=True)
    if _IX_OWNER_ENDPOINT_COMPLETED.name not in {index["name"] for index in inspector.get_indexes("tasks")}:
        _IX_OWNER_ENDPOINT_COMPLETED.create(connection)


def _v7_globus_compute(connection: Connection) -> None:
    """Globus Compute task groups with a result queue (issue 17). Idempotent."""
    globus_compute_task_groups.create(connection, checkfirst=True)


_V8_TASK_COLUMNS = ("result_blob", "result_size", "result_sha256")


def _v8_result_blobs(connection: Connection) -> None:
    """Large results in the blob store: the task row's reference, size and digest. Idempotent."""
    _add_missing_columns(connection, inspect(connection), "tasks", tasks, _V8_TASK_COLUMNS)


def _v9_leases(connection: Connection) -> None:
    """Leases of once-only background jobs shared by forwarder replicas (issue 18). Idempotent."""
    leases.create(connection, checkfirst=True)


#: schema version n is reached by running MIGRATIONS[n - 1]
MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_initial,
    _v2_lifecycle,
    _v3_revocation,
    _v4_quotas,
    _v5_dashboard,
    _v6_sharing,
    _v7_globus_compute,
    _v8_result_blobs,
    _v9_leases,
]


def migrate(connection: Connection) -> int:
    """Bring the schema to the newest version; returns it. Runs in the caller's transaction."""
    schema_version.create(connection, checkfirst=True)
    current = connection.execute(select(schema_version.c.version)).scalar()
    if current is None:
        connection.execute(schema_version.insert().values(version=0))
        current = 0
    if current > len(MIGRATIONS):
        raise RuntimeError(f"the database schema (version {current}) is newer than this forwarder ({len(MIGRATIONS)})")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        log.info("migrating the store schema to version %d", version)
        MIGRATIONS[version - 1](connection)
        connection.execute(schema_version.update().values(version=version))
    return len(MIGRATIONS)
