"""taskfabric's wire protocol: every byte that crosses a process boundary.

Used on the broker (forwarder <-> endpoint agent), on ZeroMQ (interchange <-> manager) and on the
manager's pipes to its workers.

Frame format
------------
::

    frame    = version || body
    version  = one byte, currently 0x01
    body     = msgpack map {"type": <tag: str>, "data": <fields: map>}

Field values use msgpack's own types: str, int, float, bool, nil, bin (bytes), array, map with
string keys. UUIDs (task, function and endpoint ids) travel as 16-byte bin. Timestamps are float
seconds since the Unix epoch. Floats must be finite (NaN and infinities are rejected); msgpack
extension types are rejected.

Decoding rules: unknown keys in the envelope or in any record are ignored (a newer peer may add
fields); a missing required field, a value of the wrong type, an unknown type tag or an unsupported
version byte raises `ProtocolError` naming the problem. `unpack` never raises anything else, and
never unpickles: user payloads (`Task.payload`, `FunctionBody.body`, `Result.value`,
`TaskError.exception`) are opaque bytes here, unpickled only by workers (and the client, for its own
results).

Messages (type tag -> fields, `?` = optional)
---------------------------------------------
``task_batch``        tasks: [Task], functions?: [FunctionBody], client_python?: str
``result_batch``      results: [Result]
``task_events``       started?: [TaskStarted], held?: [uuid], inventory_at?: float
``cancel_tasks``      task_ids: [uuid], grace_period_s?: float >= 0
``endpoint_status``   endpoint_id, sent_at, state (online|draining|offline), heartbeat_period_s,
                      managers?, workers?, idle_workers?, outstanding_tasks?, pending_blocks?,
                      running_blocks?, hostname?, python_version?, agent_version?, scaling?
``manager_register``  manager_id: str, hostname, workers: 1..MAX_MANAGER_WORKERS, prefetch?:
                      0..MAX_MANAGER_PREFETCH, python_version?, taskfabric_version?, block_id?,
                      pid?: 0..2**31-1, registration_token? (every text at most
                      MAX_REGISTER_TEXT_CHARS characters)
``manager_accepted``  heartbeat_period_s, heartbeat_threshold_s
``heartbeat``         sent_at
``drain``             reason?, deadline_s?

User payloads (`payloads.py`): task arguments and results above a size are zstd-compressed when
that pays, in a frame (`\x00tfz` magic, codec byte, declared size) that no pickle starts with;
`decode_payload` passes unframed payloads through, so old payloads still decode. Workers and the
client decode; the forwarder and the agent keep treating payloads as opaque bytes.

Resource specifications (`resources.py`): the keys a task's `resource_specification` may hold
(`RESOURCE_KEYS`: num_cores, num_gpus, memory_mb) and their check, shared by client and forwarder.

HTTP and results-stream records (`api.py`): `EndpointRegistered` (with its `BrokerAccess`),
`EndpointInfo`, `TaskInfo` (with `TaskDetails`, `TaskErrorInfo`), `ResultFrame`; `render` and
`parse` turn them into JSON or msgpack bodies and back. The forwarder's OpenAPI document is built
from them.

The Globus-Compute-compatible API's shapes (`globus_compute.py`): the payload-format marker of a
function body (`GLOBUS_COMPUTE_BODY_PREFIX`), globus-compute-common's `Result` message as the SDK's
Executor reads it from AMQP, task status bodies and the OAuth2 token answer.

State vocabularies (`states.py`): `TaskStatus` (waiting, running, success, failed, cancelled) and
`EndpointState` (online, draining, offline), used by every component and by the HTTP API.

Records inside them:

``Task``          task_id, function_id, payload: bin, walltime_s?: float > 0, submitted_at?,
                  task_group_id?, user?: str, resource_specification?: {str: int >= 0},
                  result_upload_url?: str, result_upload_grant?: str, result_upload_min_bytes?: int >= 0
``TaskStarted``   task_id, started_at, attempt?: int >= 1
``FunctionBody``  function_id, body: bin, python_version?
``Result``        task_id, ok: bool, value?: bin (value or value_blob required when ok), error?: TaskError
                  (required when not ok), worker_python?, received_at?, started_at?, finished_at?, attempts?,
                  stdout?: str, stderr?: str, value_blob?: ResultBlob
``ResultBlob``    name: str, size: int >= 0, sha256: str, receipt: str (a result the worker uploaded)
``TaskError``     code: str (see `taskfabric.errors.ErrorCode`), message, traceback?,
                  exception_type?, exception?: bin
"""

from __future__ import annotations

from taskfabric.errors import ProtocolError
from taskfabric.protocol.api import (
    BrokerAccess,
    EndpointInfo,
    EndpointRegistered,
    ResultFrame,
    TaskDetails,
    TaskErrorInfo,
    TaskInfo,
    parse,
    render,
)
from taskfabric.protocol.messages import (
    MAX_BLOCK_REPORTS,
    MAX_MANAGER_PREFETCH,
    MAX_MANAGER_WORKERS,
    MAX_REGISTER_TEXT_CHARS,
    MESSAGE_TYPES,
    BlockReport,
    CancelTasks,
    Drain,
    EndpointStatus,
    FunctionBody,
    Heartbeat,
    ManagerAccepted,
    ManagerRegister,
    Message,
    Result,
    ResultBatch,
    ResultBlob,
    StartUserEndpoint,
    Task,
    TaskBatch,
    TaskError,
    TaskEvents,
    TasksFinished,
    TaskStarted,
)
from taskfabric.protocol.packer import PROTOCOL_VERSION, pack, unpack, unpack_as
from taskfabric.protocol.resources import (
    MAX_RESOURCE_VALUE,
    RESOURCE_KEYS,
    check_resource_specification,
    resource_environment,
)
from taskfabric.protocol.states import TERMINAL_TASK_STATES, EndpointState, TaskStatus

__all__ = [
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
    "TasksFinished",
    "check_resource_specification",
    "pack",
    "parse",
    "render",
    "resource_environment",
    "unpack",
    "unpack_as",
]
