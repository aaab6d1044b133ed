"""Pydantic models of the JSON bodies: request validation for the low-volume routes, and the
OpenAPI description of every route. The records the agent and the client parse (endpoint
registration and info, task info, stream frames) are `taskfabric.protocol.api`'s dataclasses,
used here as they are. The submit route (the hot path) is validated by hand in
`requests`; its schema here only documents it."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskfabric.protocol import MAX_RESOURCE_VALUE, RESOURCE_KEYS, EndpointInfo, TaskInfo, TaskStatus
from taskfabric.protocol.api import EndpointActivity, GroupInfo, GroupMember, RecentFailure

__all__ = [
    "SUBMIT_BODY_SCHEMA",
    "Activity",
    "AllowedFunctionsBody",
    "AllowedFunctionsInfo",
    "AuditList",
    "BatchStatus",
    "DataUploaded",
    "EndpointAccessBody",
    "EndpointAccessDocument",
    "EndpointList",
    "EndpointRegistration",
    "ErrorBody",
    "FunctionAccessBody",
    "FunctionAccessInfo",
    "FunctionGrantBody",
    "FunctionGrantInfo",
    "FunctionInfo",
    "FunctionList",
    "FunctionRegistered",
    "FunctionRegistration",
    "GrantBody",
    "GroupCreation",
    "GroupDetails",
    "GroupList",
    "MemberAddition",
    "ResultUploaded",
    "TaskIds",
    "TaskList",
    "TaskSubmitted",
    "TaskSummary",
    "Version",
    "WhoAmI",
]

ENDPOINT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ErrorDetail(BaseModel):
    code: str
    message: str
    detail: list[dict[str, Any]] | None = None
    #: 429 QUOTA_EXCEEDED only: the quota's settings key and its configured value
    quota: str | None = None
    limit: float | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Version(BaseModel):
    api: int
    version: str
    min_client_version: str


class WhoAmI(BaseModel):
    user_id: str
    username: str
    auth: str


# --- functions ----------------------------------------------------------------------------


class FunctionRegistration(_Request):
    name: str = Field(min_length=1, max_length=256, description="a display name")
    body: str = Field(description="the serialized function (cloudpickle bytes), base64")
    python_version: str = Field("", max_length=64, description="the registering Python, e.g. 3.11.7")
    description: str | None = Field(
        None, max_length=4096, description="what it does (null: keep the stored one when the body is known)"
    )
    public: bool | None = Field(
        None, description="every user may run it and read its metadata (null: keep the stored flag; new: false)"
    )


class FunctionRegistered(BaseModel):
    function_id: str
    content_hash: str


class FunctionInfo(BaseModel):
    function_id: str
    name: str
    content_hash: str
    python_version: str
    size_bytes: int
    created_at: float
    description: str = Field("", description="what the owner says it does")
    owner: str = Field("", description="the owner's username")
    public: bool = Field(False, description="every user may run it and read its metadata")
    body: str | None = Field(None, description="base64; only with ?include_body=true (the owner only)")


class FunctionList(BaseModel):
    functions: list[FunctionInfo]


# --- function sharing and allow-lists (issue 13) ------------------------------------------


class FunctionGrantBody(_Request):
    user: str | None = Field(None, max_length=256, description="a username or user id")
    group: uuid.UUID | None = Field(None, description="a group id")


class FunctionAccessBody(_Request):
    public: bool = Field(False, description="every authenticated user may run it and read its metadata")
    grants: list[FunctionGrantBody] = Field(default_factory=list, max_length=1000, description="users and groups")


class FunctionGrantInfo(BaseModel):
    user: str | None = Field(None, description="the user's username (user grants)")
    user_id: str | None = Field(None, description="the user's id (user grants)")
    group: str | None = Field(None, description="the group's id (group grants)")
    granted_at: float


class FunctionAccessInfo(BaseModel):
    function_id: str
    owner: str
    public: bool
    grants: list[FunctionGrantInfo]


class AllowedFunctionsBody(_Request):
    allowed_functions: list[uuid.UUID] | None = Field(
        description="the only functions the endpoint runs (null: any function)", max_length=1000
    )


class AllowedFunctionsInfo(BaseModel):
    endpoint_id: str
    allowed_functions: list[str] | None = Field(description="sorted function ids; null: any function")


# --- endpoints ----------------------------------------------------------------------------


class EndpointRegistration(_Request):
    name: str = Field(pattern=ENDPOINT_NAME_PATTERN, description="unique among your endpoints")
    endpoint_id: uuid.UUID | None = Field(None, description="re-register this endpoint of yours")
    metadata: dict[str, Any] | None = Field(None, description="free-form JSON kept with the endpoint")
    allowed_functions: list[uuid.UUID] | None = Field(
        None,
        max_length=1000,
        description="the agent config's allow-list: replaces the stored one (null: keep the stored one)",
    )


class EndpointList(BaseModel):
    endpoints: list[EndpointInfo]


# --- tasks --------------------------------------------------------------------------------

SUBMIT_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tasks"],
    "properties": {
        "tasks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["function_id", "payload"],
                "properties": {
                    "function_id": {"type": "string", "format": "uuid"},
                    "payload": {
                        "type": "string",
                        "contentEncoding": "base64",
                        "description": "serialized (args, kwargs): base64 in JSON, raw bytes in msgpack",
                    },
                    "walltime_s": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    "resource_specification": {
                        "type": ["object", "null"],
                        "description": "best effort, exposed in the task's environment",
                        "properties": {
                            key: {"type": "integer", "minimum": 0, "maximum": MAX_RESOURCE_VALUE, "description": what}
                            for key, what in RESOURCE_KEYS.items()
                        },
                        "additionalProperties": False,
                    },
                },
            },
        },
        "client_python": {"type": "string", "maxLength": 64},
        "task_group_id": {"type": ["string", "null"], "format": "uuid", "description": "every task joins this group"},
        "user_endpoint_config": {
            "type": ["object", "null"],
            "description": (
                "a multi-user endpoint's user config template variables (at most 16 KiB as JSON, 16 levels deep)"
            ),
        },
    },
}


class TaskSubmitted(BaseModel):
    task_ids: list[str]


class TaskIds(_Request):
    task_ids: list[str] = Field(description="at most 10,000 task ids")


class CancelRequest(_Request):
    task_ids: list[str] = Field(description="at most 1,000 task ids to cancel")


class DataUploaded(BaseModel):
    sha256: str = Field(description="the upload's sha256 (hex), as named in the path")
    size: int = Field(description="bytes stored")
    token: str = Field(description="the signed read reference a worker presents in X-Taskfabric-Data-Ref")
    expires_at: float = Field(description="when the reference stops working (epoch seconds)")
    endpoint_url: str | None = Field(
        description="this forwarder's URL as endpoints' workers reach it (the reference names it); null when the "
        "forwarder has none configured (result_upload_url, or a fixed host and port)"
    )


class ResultUploaded(BaseModel):
    name: str = Field(description="the blob the result was stored as")
    size: int = Field(description="bytes stored")
    sha256: str = Field(description="their sha256 (hex)")
    receipt: str = Field(description="the forwarder's receipt, carried by the worker's result message")


class BatchStatus(BaseModel):
    tasks: dict[str, TaskInfo]
    unknown: list[str]


class TaskSummary(BaseModel):
    task_id: str
    status: TaskStatus
    endpoint_id: str
    function_id: str
    task_group_id: str | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    error_code: str | None
    submitted_by: str | None = Field(None, description="the username of who submitted it")


class TaskList(BaseModel):
    tasks: list[TaskSummary] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


# --- activity (`taskfabric top`) ----------------------------------------------------------


class Activity(BaseModel):
    as_of: float = Field(description="the forwarder's time of the answer (seconds since the epoch)")
    window_s: float = Field(description="finished tasks are counted from as_of - window_s on")
    endpoints: list[EndpointActivity] = Field(description="endpoints you have tasks on, by id")
    recent_failures: list[RecentFailure] = Field(description="your newest failed tasks of the last hour, newest first")


# --- sharing: groups ----------------------------------------------------------------------


class GroupCreation(_Request):
    name: str = Field(description="unique among your groups: 1-128 letters, digits, _ . @ -; not a UUID")
    description: str = Field("", description="at most 1000 characters")


class GroupList(BaseModel):
    groups: list[GroupInfo] = Field(description="the groups you belong to (any role), by name")


class GroupDetails(BaseModel):
    group_id: str
    name: str
    description: str
    owner_id: str
    owner: str = Field(description="the owner's username")
    role: str = Field(description="your role: owner, manager or member")
    member_count: int
    members: list[GroupMember] = Field(description="the owner first, then managers, then members")
    created_at: float


class MemberAddition(_Request):
    user: str = Field(description="a username, or a user id (a Globus identity's sub)")
    role: str = Field("member", description="member or manager (managers: the owner only)")


# --- endpoint sharing (issue 13) ----------------------------------------------------------

_MAX_LIMIT_VALUE = 2**31 - 1


class GrantBody(_Request):
    user: str | None = Field(None, max_length=256, description="a username or user id (give user or group)")
    group: str | None = Field(None, max_length=64, description="a group id (give user or group)")
    role: Literal["submit", "manage"] = Field("submit", description="submit: run tasks; manage: also share, see all")
    max_waiting_tasks: int | None = Field(
        None, ge=0, le=_MAX_LIMIT_VALUE, description="this grant's unfinished tasks on the endpoint, at most"
    )
    max_tasks_per_day: int | None = Field(
        None, ge=0, le=_MAX_LIMIT_VALUE, description="tasks submitted per UTC day through this grant, at most"
    )


class EndpointAccessBody(_Request):
    public: bool = Field(False, description="every authenticated user may submit")
    grants: list[GrantBody] = Field(default_factory=list, max_length=1000)


class GrantInfo(BaseModel):
    user: str | None = None
    user_id: str | None = None
    group: str | None = None
    group_name: str | None = None
    role: str
    max_waiting_tasks: int | None
    max_tasks_per_day: int | None
    granted_at: float
    granted_by: str | None


class EndpointAccessDocument(BaseModel):
    endpoint_id: str
    owner: str
    public: bool
    grants: list[GrantInfo]


class AuditEventInfo(BaseModel):
    event_id: str
    at: float
    actor: str
    actor_id: str
    action: str = Field(description="endpoint.access, endpoint.submit, endpoint.allowed_functions, ...")
    endpoint_id: str | None
    detail: dict[str, Any]


class AuditList(BaseModel):
    events: list[AuditEventInfo] = Field(description="newest first")
