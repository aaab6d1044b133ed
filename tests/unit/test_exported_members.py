"""Each package's public names, exactly (httpx `tests/test_exported_members.py` style).

A package's `__all__` is its contract with its users: adding or removing a name is a decision, so
it shows up here. Each name must resolve, and a package that only re-exports must export every
public name it imports (nothing half-public)."""

from __future__ import annotations

import importlib
import inspect

import pytest

EXPECTED: dict[str, list[str]] = {
    "taskfabric": ["__version__"],
    "taskfabric.tools": [],
    "taskfabric.protocol": [
        "MAX_BLOCK_REPORTS",
        "MAX_MANAGER_PREFETCH",
        "MAX_MANAGER_WORKERS",
        "MAX_REGISTER_TEXT_CHARS",
        "MAX_RESOURCE_VALUE",
        "MESSAGE_TYPES",
        "PROTOCOL_VERSION",
        "RESOURCE_KEYS",
        "TERMINAL_TASK_STATES",
        "BlockReport",
        "BrokerAccess",
        "CancelTasks",
        "Drain",
        "EndpointInfo",
        "EndpointRegistered",
        "EndpointState",
        "EndpointStatus",
        "FunctionBody",
        "Heartbeat",
        "ManagerAccepted",
        "ManagerRegister",
        "Message",
        "ProtocolError",
        "Result",
        "ResultBatch",
        "ResultBlob",
        "ResultFrame",
        "StartUserEndpoint",
        "Task",
        "TaskBatch",
        "TaskDetails",
        "TaskError",
        "TaskErrorInfo",
        "TaskEvents",
        "TaskInfo",
        "TaskStarted",
        "TaskStatus",
        "check_resource_specification",
        "pack",
        "parse",
        "render",
        "resource_environment",
        "unpack",
        "unpack_as",
    ],
    "taskfabric.transport": [
        "ConsumerHandle",
        "Delivery",
        "DeliveryCallback",
        "MemoryBroker",
        "MemoryTransport",
        "OutgoingMessage",
        "RabbitTransport",
        "Transport",
        "redact_url",
    ],
    "taskfabric.errors": [
        "AccessRefused",
        "AccountNotAllowed",
        "AuthenticationError",
        "BrokerError",
        "BrokerUnavailable",
        "ConfigError",
        "ConnectionLost",
        "DataIntegrityError",
        "DataUnavailable",
        "DeserializationFailed",
        "EndpointDeleted",
        "ErrorCode",
        "FunctionNotAllowed",
        "IdentityNotMapped",
        "InvalidRequest",
        "LedgerError",
        "ManagerLost",
        "NotFound",
        "NotFoundError",
        "PayloadTooLarge",
        "PermissionDenied",
        "PreconditionFailed",
        "ProtocolError",
        "ProviderError",
        "PublishRejected",
        "PublishTimeout",
        "QuotaExceeded",
        "ResultIntegrityError",
        "ResultTooLarge",
        "ServiceError",
        "StoreError",
        "SubmitFailed",
        "TaskCancelled",
        "TaskDeadLettered",
        "TaskExecutionFailed",
        "TaskFailed",
        "TaskPending",
        "TaskQueueLost",
        "TaskfabricError",
        "Unroutable",
        "UserConfigInvalid",
        "UserDeleted",
        "UserDisabled",
        "WalltimeExceeded",
        "WorkerLost",
    ],
    "taskfabric.settings": [
        "SettingDoc",
        "describe_settings",
        "load_settings",
        "load_yaml",
        "setting",
        "settings_from_env",
    ],
    "taskfabric.testing": [
        "AMQP_URL_ENV",
        "MANAGEMENT_URL_ENV",
        "BrokerUnderTest",
        "broker_for_tests",
        "unique_name",
        "wait_until",
    ],
    "taskfabric.broker_config": [
        "DEFAULT_DELIVERY_LIMIT",
        "DEFAULT_VHOST",
        "EndpointPermissions",
        "EndpointQueues",
        "ManagementClient",
        "NodeInfo",
        "RabbitNode",
        "Topology",
        "broker_username",
        "check_vhost",
        "endpoint_id_of_username",
        "find_rabbitmq_bin",
        "install_hint",
        "new_queue_secret",
        "vhost_of",
    ],
    "taskfabric.forwarder": [
        "AuthProvider",
        "AuthSettings",
        "Forwarder",
        "ForwarderSettings",
        "GlobusTokenProvider",
        "Identity",
        "LocalTokenProvider",
        "Store",
        "TaskStatus",
        "create_app",
        "create_token",
        "create_user",
        "hash_token",
        "list_users",
        "new_token",
        "revoke_tokens",
        "serve",
    ],
    "taskfabric.forwarder.auth": [
        "AUTHENTICATION_REQUIRED",
        "AUTH_UNAVAILABLE",
        "IDENTITY_CONFLICT",
        "IDENTITY_NOT_ALLOWED",
        "INVALID_TOKEN",
        "TOKEN_EXPIRED",
        "TOKEN_PREFIX",
        "TOKEN_REVOKED",
        "USER_DISABLED",
        "AllowList",
        "AuthProvider",
        "GlobusTokenProvider",
        "LocalTokenProvider",
        "TokenCache",
        "hash_token",
        "invalid_token",
        "make_provider",
        "new_token",
    ],
    "taskfabric.forwarder.store": [
        "Failure",
        "SchemaStatus",
        "Store",
        "StoreConflict",
        "StoreMissing",
        "StoreNeedsMigration",
        "StoreRunner",
        "StoreTooNew",
    ],
    "taskfabric.endpoint_agent": [
        "Agent",
        "AgentPaths",
        "BlockScaler",
        "EndpointBrokerLink",
        "EndpointConfig",
        "EndpointConnection",
        "ForwarderEndpoints",
        "HeldTask",
        "Interchange",
        "Ledger",
        "LocalEndpoint",
        "ManagerSockets",
        "RouterSocket",
        "Scaler",
        "configure_endpoint",
        "delete_endpoint",
        "list_local_endpoints",
        "register_endpoint",
        "run_agent",
        "start_endpoint",
        "stop_endpoint",
    ],
    "taskfabric.client": [
        "AccountNotAllowed",
        "AuthenticationError",
        "Batch",
        "Client",
        "ClientConfig",
        "DataIntegrityError",
        "DataRef",
        "DataUnavailable",
        "DeserializationFailed",
        "EndpointDeleted",
        "Executor",
        "ExecutorOptions",
        "FunctionNotAllowed",
        "IdentityNotMapped",
        "InvalidRequest",
        "ManagerLost",
        "NotFoundError",
        "PayloadTooLarge",
        "PermissionDenied",
        "RemoteTraceback",
        "ResultIntegrityError",
        "ResultTooLarge",
        "ServiceError",
        "TaskCancelled",
        "TaskDeadLettered",
        "TaskExecutionFailed",
        "TaskFailed",
        "TaskFuture",
        "TaskListPage",
        "TaskPending",
        "TaskQueueLost",
        "UserConfigInvalid",
        "UserDeleted",
        "UserDisabled",
        "WalltimeExceeded",
        "WorkerLost",
    ],
    "taskfabric.manager": ["Manager", "ManagerSettings", "TaskRunner", "WalltimeExceededError", "WorkerPool"],
}

#: packages whose `__init__` only re-exports (the others define helpers of their own there)
REEXPORTING = [
    "taskfabric",
    "taskfabric.protocol",
    "taskfabric.transport",
    "taskfabric.broker_config",
    "taskfabric.forwarder",
    "taskfabric.endpoint_agent",
    "taskfabric.client",
    "taskfabric.manager",
]
COMPONENTS = ["broker_config", "forwarder", "endpoint_agent", "client", "manager"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_all_is_exactly_the_expected_list(name: str) -> None:
    assert importlib.import_module(name).__all__ == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_exported_name_resolves(name: str) -> None:
    module = importlib.import_module(name)
    missing = [member for member in module.__all__ if not hasattr(module, member)]
    assert not missing, f"{name}.__all__ names what does not exist: {missing}"


@pytest.mark.parametrize("name", REEXPORTING)
def test_a_reexporting_package_exports_every_public_name_it_imports(name: str) -> None:
    module = importlib.import_module(name)
    public = [
        member
        for member, value in vars(module).items()
        if not member.startswith("_") and not inspect.ismodule(value) and member != "annotations"
    ]
    assert sorted(set(public) - set(module.__all__)) == []


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_components_landing_page_says_its_job_its_peers_and_its_state(component: str) -> None:
    doc = importlib.import_module(f"taskfabric.{component}").__doc__ or ""
    assert "not yet built" not in doc
    assert "talks to" in doc.lower(), f"taskfabric.{component}'s docstring does not say who it talks to"
    assert "state" in doc.lower(), f"taskfabric.{component}'s docstring does not say where its state is"
