"""`Client`: the researcher's handle on a taskfabric service (one forwarder, one user).

from taskfabric.client import Client
client = Client()                                   # URL and token from env or `taskfabric login`
fid = client.register_function(square)
tid = client.run(7, endpoint_id=ep, function_id=fid)
client.get_result(tid)                              # raises TaskPending until it is done
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from taskfabric.client.config import ClientConfig
from taskfabric.client.http import ServiceHTTP
from taskfabric.client.retry import retry_transient
from taskfabric.client.serialization import (
    CLIENT_PYTHON,
    exception_from_error,
    serialize_arguments,
    serialize_data,
    serialize_function,
    value_from_result,
)
from taskfabric.errors import (
    ErrorCode,
    InvalidRequest,
    NotFoundError,
    ResultIntegrityError,
    ServiceError,
    TaskPending,
)
from taskfabric.protocol import TaskStatus, check_resource_specification
from taskfabric.protocol.api import RESULT_NOT_AVAILABLE, RESULT_SHA256_HEADER, RESULT_WORKER_PYTHON_HEADER
from taskfabric.protocol.data_refs import DataRef

__all__ = ["Batch", "Client", "TaskListPage", "resolve_group_name"]

#: `put_data` remembers the digests of the last few `bytes` objects it uploaded (at most this many bytes)
_DIGEST_MEMORY_BYTES = 64 * 1024 * 1024
_DIGEST_MEMORY_ITEMS = 8

#: tasks per submit request (the service accepts up to its max_batch_tasks, 10,000 by default)
SUBMIT_CHUNK = 2000
#: task ids per cancel request (the service's limit)
CANCEL_CHUNK = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    function_id: uuid.UUID
    payload: bytes
    walltime_s: float | None
    resource_specification: dict[str, int] | None = None


def checked_resource_specification(spec: Any) -> dict[str, int] | None:
    """A resource specification checked here, before any task is queued: `InvalidRequest`
    names the bad key or value (the service checks it again)."""
    try:
        return check_resource_specification(spec) or None
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="INVALID_REQUEST") from None


@dataclasses.dataclass(frozen=True, slots=True)
class TaskListPage:
    """One page of `Client.list_tasks_page`: task summaries newest first, and the cursor of the
    next page (None on the last)."""

    tasks: list[dict[str, Any]]
    next_cursor: str | None


class Batch:
    """Many calls for one endpoint, sent in as few requests as possible (`Client.batch_run`),
    all in task group `task_group_id` when given."""

    def __init__(
        self, task_group_id: uuid.UUID | str | None = None, *, user_endpoint_config: dict[str, Any] | None = None
    ) -> None:
        self.calls: list[_Call] = []
        self.task_group_id = uuid.UUID(str(task_group_id)) if task_group_id is not None else None
        #: for a multi-user endpoint: its user config template's variables (see `Client.run`)
        self.user_endpoint_config = user_endpoint_config

    def add(self, function_id: uuid.UUID | str, *args: Any, walltime_s: float | None = None, **kwargs: Any) -> None:
        self.calls.append(_Call(uuid.UUID(str(function_id)), serialize_arguments(args, kwargs), walltime_s))

    def __len__(self) -> int:
        return len(self.calls)


class Client:
    """Talks to one forwarder as one user. Thread-safe; close it (or use `with`) when done."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        submit_retry_s: float = 60.0,
        ca_file: str | Path | None = None,
        allow_insecure: bool | None = None,
    ) -> None:
        """`submit_retry_s`: how long a submission is retried through a forwarder restart or a
        broker outage (503, timeouts, refused connections) before it fails; 0 disables retries.
        Retries never make second tasks (each request carries a `submission_id`).

        `url`: the forwarder, or several replicas of it (a list, or a comma-separated string): the
        client fails over to the next on connection errors, and so does an Executor's results stream.

        `ca_file`: a PEM CA certificate that signed the forwarder's certificate (a private CA;
        default `TASKFABRIC_CA_FILE`, then the one saved by `taskfabric login`, else the system's
        trust store); certificates are always verified. `allow_insecure=True` (or
        `TASKFABRIC_ALLOW_INSECURE=1`) permits plain http:// to a host that is not loopback, which
        is otherwise refused with a `ConfigError` before any connection is made."""
        if submit_retry_s < 0:
            raise ValueError("submit_retry_s must not be negative")
        self.submit_retry_s = submit_retry_s
        self.config = ClientConfig.resolve(url, token, ca_file=str(ca_file) if ca_file is not None else None)
        self.config.check_secure(allow_insecure=allow_insecure)
        #: verifies the forwarder, for HTTP and the results stream
        self.ssl_context = self.config.ssl_context()
        self._http = ServiceHTTP(self.config.urls, self.config.token, timeout_s=timeout_s, verify=self.ssl_context)
        self._data_refs: dict[str, DataRef] = {}  # sha256 -> the reference of an upload (put_data)
        # id -> (bytes object, sha256 of its upload): the last few uploaded (see `put_data`)
        self._digests: collections.OrderedDict[int, tuple[bytes, str]] = collections.OrderedDict()
        self._digest_lock = threading.Lock()
        #: the forwarder's URL as endpoints reach it, from the last upload's answer (None: the
        #: forwarder has none configured, or nothing was uploaded yet)
        self.data_endpoint_url: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- service ------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get("/v1/version")
        return result

    def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = self._http.get("/v1/whoami")
        return result

    # --- functions ----------------------------------------------------------------------

    def register_function(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        by_value: bool = False,
        description: str | None = None,
        public: bool = False,
    ) -> uuid.UUID:
        """Register a function (idempotent: the same code gets the same id) and return its id.

        Functions from a notebook or `__main__` travel by value. Functions from an importable
        module travel by reference: that module must be installed where the endpoint's workers run,
        unless `by_value=True`, which ships the module's code along. `description` is shown to
        those the function is shared with; `public=True` lets every user of the service run it by
        id (registering the same code again without `public` leaves its sharing as it is)."""
        body = serialize_function(fn, by_value=by_value)
        return self.register_serialized_function(
            body, name=name or function_name(fn), description=description, public=public
        )

    def register_serialized_function(
        self, body: bytes, *, name: str, description: str | None = None, public: bool = False
    ) -> uuid.UUID:
        """Register a function already serialized by `serialize_function` (idempotent)."""
        request: dict[str, Any] = {
            "name": name,
            "body": base64.b64encode(body).decode(),
            "python_version": CLIENT_PYTHON,
        }
        if description is not None:
            request["description"] = description
        if public:
            request["public"] = True
        answer = self._http.post("/v1/functions", request, idempotent=True)
        return uuid.UUID(answer["function_id"])

    def get_function(self, function_id: uuid.UUID | str, *, include_body: bool = False) -> dict[str, Any]:
        """A function's metadata (name, description, owner, python_version, public): yours, or
        one shared with you. `include_body=True` (yours only) adds its serialized body (base64)."""
        params = {"include_body": "true"} if include_body else None
        result: dict[str, Any] = self._http.get(f"/v1/functions/{function_id}", params=params)
        return result

    def list_functions(self, *, shared: bool = False) -> list[dict[str, Any]]:
        """Your functions; with `shared=True`, then other users' functions shared with you (or
        public), each with its `owner`."""
        params = {"shared": "true"} if shared else None
        return list(self._http.get("/v1/functions", params=params)["functions"])

    # --- function sharing ---------------------------------------------------------------

    def get_function_access(self, function_id: uuid.UUID | str) -> dict[str, Any]:
        """Who your function is shared with: `{"public": bool, "grants": [{"user", "user_id"} |
        {"group"}], ...}`."""
        result: dict[str, Any] = self._http.get(f"/v1/functions/{function_id}/access")
        return result

    def set_function_access(
        self, function_id: uuid.UUID | str, *, public: bool, grants: Iterable[dict[str, str]]
    ) -> dict[str, Any]:
        """Replace your function's sharing (each grant `{"user": name}` or `{"group": id}`)."""
        body = {"public": public, "grants": list(grants)}
        result: dict[str, Any] = self._http.put(f"/v1/functions/{function_id}/access", body)
        return result

    def share_function(
        self,
        function_id: uuid.UUID | str,
        *,
        user: str | None = None,
        group: uuid.UUID | str | None = None,
        public: bool | None = None,
    ) -> dict[str, Any]:
        """Share your function with a user (username or id) and/or a group (id), and/or make it
        public (`public=True`); returns the new sharing."""
        current = self.get_function_access(function_id)
        grants = _grant_requests(current)
        if user is not None:
            grants.append({"user": user})
        if group is not None:
            grants.append({"group": str(group)})
        new_public = bool(current["public"]) if public is None else public
        return self.set_function_access(function_id, public=new_public, grants=_unique(grants))

    def unshare_function(
        self,
        function_id: uuid.UUID | str,
        *,
        user: str | None = None,
        group: uuid.UUID | str | None = None,
        public: bool | None = None,
    ) -> dict[str, Any]:
        """Stop sharing your function with a user (username or id) and/or a group (id);
        `public=False` makes it private to its grants again. Returns the new sharing."""
        current = self.get_function_access(function_id)
        kept = [
            grant
            for grant in current["grants"]
            if not (user is not None and user in (grant.get("user"), grant.get("user_id")))
            and not (group is not None and str(group) == grant.get("group"))
        ]
        new_public = bool(current["public"]) if public is None else public
        return self.set_function_access(function_id, public=new_public, grants=_grant_requests({"grants": kept}))

    # --- endpoint allow-lists -----------------------------------------------------------

    def get_allowed_functions(self, endpoint_id: uuid.UUID | str) -> list[str] | None:
        """The function ids the endpoint runs (None: any function)."""
        answer = self._http.get(f"/v1/endpoints/{endpoint_id}/allowed_functions")
        allowed: list[str] | None = answer["allowed_functions"]
        return allowed

    def set_allowed_functions(
        self, endpoint_id: uuid.UUID | str, function_ids: Iterable[uuid.UUID | str] | None
    ) -> list[str] | None:
        """Replace the endpoint's allow-list (None: any function); the endpoint's owner or a
        manager. The agent's config.yaml, when it sets one, replaces it again at its next start."""
        listed = None if function_ids is None else [str(function_id) for function_id in function_ids]
        answer = self._http.put(f"/v1/endpoints/{endpoint_id}/allowed_functions", {"allowed_functions": listed})
        allowed: list[str] | None = answer["allowed_functions"]
        return allowed

    def delete_function(self, function_id: uuid.UUID | str) -> None:
        self._http.delete(f"/v1/functions/{function_id}")

    # --- endpoints ----------------------------------------------------------------------

    def list_endpoints(self) -> list[dict[str, Any]]:
        """Your endpoints, then those shared with you, each with at least `id`, `name`, `status`
        (online/offline), `role` (owner, manage or submit) and `owner` (a username)."""
        return [_with_id(endpoint) for endpoint in self._http.get("/v1/endpoints")["endpoints"]]

    def get_endpoint(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]:
        return _with_id(self._http.get(f"/v1/endpoints/{endpoint_id}"))

    def get_endpoint_status(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]:
        return _with_id(self._http.get(f"/v1/endpoints/{endpoint_id}/status"))

    def register_endpoint(
        self,
        name: str,
        *,
        endpoint_id: uuid.UUID | str | None = None,
        metadata: dict[str, Any] | None = None,
        allowed_functions: Iterable[uuid.UUID | str] | None = None,
    ) -> dict[str, Any]:
        """Register (or re-register) an endpoint; returns its id and broker credentials.
        `allowed_functions` (its config's allow-list) replaces the stored one; None keeps it."""
        body: dict[str, Any] = {"name": name}
        if endpoint_id is not None:
            body["endpoint_id"] = str(endpoint_id)
        if metadata:
            body["metadata"] = metadata
        if allowed_functions is not None:
            body["allowed_functions"] = [str(function_id) for function_id in allowed_functions]
        result: dict[str, Any] = self._http.post("/v1/endpoints", body, idempotent=True)
        return result

    def delete_endpoint(self, endpoint_id: uuid.UUID | str) -> None:
        self._http.delete(f"/v1/endpoints/{endpoint_id}")

    # --- endpoint sharing ---------------------------------------------------------------

    def get_endpoint_access(self, endpoint_id: uuid.UUID | str) -> dict[str, Any]:
        """Who besides its owner may use the endpoint: `{"endpoint_id", "owner", "public",
        "grants": [{"user"|"group", "role", "max_waiting_tasks", "max_tasks_per_day", ...}]}`
        (its owner and managers only)."""
        document: dict[str, Any] = self._http.get(f"/v1/endpoints/{endpoint_id}/access")
        return document

    def set_endpoint_access(
        self, endpoint_id: uuid.UUID | str, *, public: bool, grants: Iterable[dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the endpoint's whole access document; returns the new one. Each grant names a
        `user` (username or id) or a `group` (id), a `role` (submit or manage) and optional
        `max_waiting_tasks` / `max_tasks_per_day`."""
        body = {"public": public, "grants": list(grants)}
        document: dict[str, Any] = self._http.put(f"/v1/endpoints/{endpoint_id}/access", body)
        return document

    def share_endpoint(
        self,
        endpoint_id: uuid.UUID | str,
        *,
        user: str | None = None,
        group: uuid.UUID | str | None = None,
        role: str = "submit",
        max_waiting_tasks: int | None = None,
        max_tasks_per_day: int | None = None,
    ) -> dict[str, Any]:
        """Grant `user` (username or id) or `group` (id) `role` on the endpoint, replacing the
        grant they had; returns the new access document."""
        document = self.get_endpoint_access(endpoint_id)
        grant: dict[str, Any] = {**_principal(user, group), "role": role}
        if max_waiting_tasks is not None:
            grant["max_waiting_tasks"] = max_waiting_tasks
        if max_tasks_per_day is not None:
            grant["max_tasks_per_day"] = max_tasks_per_day
        kept = [_grant_request(item) for item in document["grants"] if not _names(item, user, group)]
        return self.set_endpoint_access(endpoint_id, public=document["public"], grants=[*kept, grant])

    def unshare_endpoint(
        self, endpoint_id: uuid.UUID | str, *, user: str | None = None, group: uuid.UUID | str | None = None
    ) -> dict[str, Any]:
        """Remove the grant of `user` or `group` (tasks they submitted before still run)."""
        _principal(user, group)
        document = self.get_endpoint_access(endpoint_id)
        kept = [_grant_request(item) for item in document["grants"] if not _names(item, user, group)]
        return self.set_endpoint_access(endpoint_id, public=document["public"], grants=kept)

    def set_endpoint_public(self, endpoint_id: uuid.UUID | str, public: bool) -> dict[str, Any]:
        """Let every authenticated user submit to the endpoint (or stop that); grants stay."""
        document = self.get_endpoint_access(endpoint_id)
        grants = [_grant_request(item) for item in document["grants"]]
        return self.set_endpoint_access(endpoint_id, public=public, grants=grants)

    def get_endpoint_audit(self, endpoint_id: uuid.UUID | str, *, limit: int = 100) -> list[dict[str, Any]]:
        """The endpoint's sharing changes and cross-user submissions, newest first."""
        answer = self._http.get(f"/v1/endpoints/{endpoint_id}/audit", params={"limit": str(limit)})
        return list(answer["events"])

    # --- tasks --------------------------------------------------------------------------

    def run(
        self,
        *args: Any,
        endpoint_id: uuid.UUID | str,
        function_id: uuid.UUID | str,
        walltime_s: float | None = None,
        user_endpoint_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> uuid.UUID:
        """Submit one call; returns its task id. `user_endpoint_config`: for a multi-user
        endpoint, the variables its user config template is rendered with (e.g.
        `{"account": "proj42"}`); each different value gets its own user endpoint process."""
        batch = Batch(user_endpoint_config=user_endpoint_config)
        batch.add(function_id, *args, walltime_s=walltime_s, **kwargs)
        return self.batch_run(endpoint_id, batch)[0]

    def create_batch(self, task_group_id: uuid.UUID | str | None = None) -> Batch:
        return Batch(task_group_id)

    def batch_run(self, endpoint_id: uuid.UUID | str, batch: Batch) -> list[uuid.UUID]:
        """Submit every call of `batch`; returns their task ids in order."""
        if not batch.calls:
            raise InvalidRequest("the batch is empty")
        task_ids: list[uuid.UUID] = []
        for start in range(0, len(batch.calls), SUBMIT_CHUNK):
            chunk = batch.calls[start : start + SUBMIT_CHUNK]
            task_ids.extend(
                self.submit_calls(
                    endpoint_id,
                    chunk,
                    task_group_id=batch.task_group_id,
                    user_endpoint_config=batch.user_endpoint_config,
                )
            )
        return task_ids

    def submit_calls(
        self,
        endpoint_id: uuid.UUID | str,
        calls: Iterable[_Call],
        *,
        task_group_id: uuid.UUID | None = None,
        user_endpoint_config: dict[str, Any] | None = None,
        submission_id: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """One submit request (the Executor's fast path: msgpack, raw bytes), every task joining
        task group `task_group_id` when given; retried with the same `submission_id` (a new one
        unless given: the task ids follow from it, `taskfabric.protocol.task_ids`) through short
        outages (see `taskfabric.client.retry`)."""
        tasks = []
        for call in calls:
            entry: dict[str, Any] = {"function_id": str(call.function_id), "payload": call.payload}
            if call.walltime_s is not None:
                entry["walltime_s"] = float(call.walltime_s)
            if call.resource_specification:
                entry["resource_specification"] = call.resource_specification
            tasks.append(entry)
        body: dict[str, Any] = {
            "tasks": tasks,
            "client_python": CLIENT_PYTHON,
            "submission_id": str(submission_id or uuid.uuid4()),
        }
        if task_group_id is not None:
            body["task_group_id"] = str(task_group_id)
        if user_endpoint_config is not None:
            body["user_endpoint_config"] = user_endpoint_config
        path = f"/v1/endpoints/{endpoint_id}/tasks"
        answer = retry_transient(
            lambda: self._http.post_msgpack(path, body),
            budget_s=self.submit_retry_s,
            what=f"submitting {len(tasks)} tasks",
        )
        return [uuid.UUID(str(task_id)) for task_id in answer["task_ids"]]

    def get_task(self, task_id: uuid.UUID | str) -> dict[str, Any]:
        """Status (`waiting`, `running`, `success`, `failed`, `cancelled`), timestamps and attempts
        (under `details`), captured `stdout` and `stderr`, and (when done) the encoded outcome."""
        result: dict[str, Any] = self._http.get(f"/v1/tasks/{task_id}")
        return result

    def get_result(self, task_id: uuid.UUID | str) -> Any:
        """The task's return value; raises `TaskPending` while it runs and the remote failure
        (the original exception type when it can be rebuilt here) when it failed."""
        return outcome_of(self.get_task(task_id))

    def put_data(self, value: Any, *, min_ttl_s: float = 600.0) -> DataRef:
        """Upload `value` once to pass it by reference: `executor.submit(f, client.put_data(big))`.

        The worker downloads it (checking its sha256) and calls `f` with the object itself; only
        the small `DataRef` travels with each task. The same object (same pickled bytes) is uploaded
        once while its reference has more than `min_ttl_s` to live; the same `bytes` object is not
        even pickled and hashed again (the last few are remembered, up to 64 MiB). Raises
        `PayloadTooLarge` above the forwarder's `max_data_bytes`. See docs/researcher.md "Large data"."""
        now = time.time()
        digest = self._known_digest(value)
        cached = self._data_refs.get(digest) if digest is not None else None
        if cached is not None and cached.expires_at - now > min_ttl_s:
            return cached
        data = serialize_data(value)
        digest = hashlib.sha256(data).hexdigest()
        cached = self._data_refs.get(digest)
        if cached is None or cached.expires_at - now <= min_ttl_s:
            cached = self._upload_data(digest, data, now)
        self._remember_digest(value, digest)
        return cached

    def _upload_data(self, digest: str, data: bytes, now: float) -> DataRef:
        answer = self._http.put_bytes(f"/v1/data/{digest}", data)
        endpoint_url = answer.get("endpoint_url")
        self.data_endpoint_url = str(endpoint_url) if endpoint_url else None
        ref = DataRef(
            # the forwarder's URL as workers reach it; else the replica that took the upload (as
            # this client reaches it: right when the endpoint runs where the client does)
            url=self.data_endpoint_url or self._http.url,
            sha256=digest,
            size=int(answer["size"]),
            token=str(answer["token"]),
            expires_at=float(answer["expires_at"]),
        )
        self._data_refs = {key: old for key, old in self._data_refs.items() if old.expires_at > now}
        self._data_refs[digest] = ref
        return ref

    def _known_digest(self, value: Any) -> str | None:
        """The digest of this very `bytes` object's upload, if it is one of the last few."""
        if type(value) is not bytes:
            return None
        with self._digest_lock:
            known = self._digests.get(id(value))
        return known[1] if known is not None and known[0] is value else None

    def _remember_digest(self, value: Any, digest: str) -> None:
        """Remember the digest of a `bytes` object (immutable: it cannot change under its id while
        held here). Holds the last few, at most `_DIGEST_MEMORY_BYTES` of them."""
        if type(value) is not bytes or len(value) > _DIGEST_MEMORY_BYTES:
            return
        with self._digest_lock:
            self._digests.pop(id(value), None)
            self._digests[id(value)] = (value, digest)
            held = sum(len(item[0]) for item in self._digests.values())
            while len(self._digests) > _DIGEST_MEMORY_ITEMS or held > _DIGEST_MEMORY_BYTES:
                _key, (oldest, _digest) = self._digests.popitem(last=False)
                held -= len(oldest)

    def download_result(self, task_id: uuid.UUID | str) -> Any:
        """`get_result` for large results: the raw result bytes (`GET /v1/tasks/{id}/result`,
        streamed from the forwarder's blob store, not base64 in JSON), checked against the sha256
        the forwarder recorded. Raises `ResultIntegrityError` when they do not match, and what
        `get_result` raises for a task without a result (`TaskPending`, the remote failure)."""
        try:
            data, headers = self._http.get_bytes(f"/v1/tasks/{task_id}/result")
        except ServiceError as exc:
            if exc.code == ErrorCode.RESULT_INTEGRITY:
                raise ResultIntegrityError(str(exc), task_id=task_id) from None
            if exc.code == RESULT_NOT_AVAILABLE:
                return outcome_of(self.get_task(task_id))
            raise
        if hashlib.sha256(data).hexdigest() != headers.get(RESULT_SHA256_HEADER, ""):
            raise ResultIntegrityError(
                f"the result of task {task_id} does not match the sha256 the forwarder sent", task_id=task_id
            )
        return value_from_result(data, worker_python=headers.get(RESULT_WORKER_PYTHON_HEADER, ""), task_id=task_id)

    def fetch_uploaded_result(self, task_id: uuid.UUID | str, *, sha256: str, worker_python: str = "") -> Any:
        """The value of a result kept in the blob store, which the results stream or a batch
        answer names only by its sha256: downloaded from `GET /v1/tasks/{id}/result`, streamed
        into one buffer, and checked against that `sha256` (`ResultIntegrityError` when it does
        not match)."""
        try:
            data, _headers = self._http.get_bytes(f"/v1/tasks/{task_id}/result")
        except ServiceError as exc:
            if exc.code == ErrorCode.RESULT_INTEGRITY:
                raise ResultIntegrityError(str(exc), task_id=task_id) from None
            raise
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ResultIntegrityError(
                f"the result of task {task_id} does not match the sha256 the service recorded for it", task_id=task_id
            )
        return value_from_result(data, worker_python=worker_python, task_id=task_id)

    def get_batch_result(self, task_ids: Iterable[uuid.UUID | str]) -> dict[uuid.UUID, dict[str, Any]]:
        """For each task: `{"status", "pending": bool, "result"}` or `{"status", "pending",
        "exception"}` (the exception object, not raised). Unknown ids are left out. Large results
        the service leaves out of its answer (past 16 MiB of them) are downloaded one by one."""
        ids = [str(task_id) for task_id in task_ids]
        out: dict[uuid.UUID, dict[str, Any]] = {}
        for start in range(0, len(ids), 10_000):
            answer = self._http.post("/v1/tasks/batch", {"task_ids": ids[start : start + 10_000]}, idempotent=True)
            for task_id, info in answer["tasks"].items():
                out[uuid.UUID(task_id)] = self._summary(info)
        return out

    def _summary(self, info: dict[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {"status": info.get("status"), "pending": is_pending(info)}
        if summary["pending"]:
            return summary
        try:
            if info.get("result") is None and info.get("result_sha256"):  # left out: read it from its route
                details = info.get("details") or {}
                summary["result"] = self.fetch_uploaded_result(
                    info["task_id"], sha256=info["result_sha256"], worker_python=details.get("worker_python", "")
                )
            else:
                summary["result"] = outcome_of(info)
        except Exception as exc:
            summary["exception"] = exc
        return summary

    def cancel(self, task_ids: Iterable[uuid.UUID | str]) -> dict[uuid.UUID, bool]:
        """Cancel tasks. For each id: True if this call cancelled it (it will not run, or its
        worker is stopped), False if it had already finished, or is unknown or not yours."""
        ids = [_task_id(task_id) for task_id in task_ids]
        out: dict[uuid.UUID, bool] = {}
        for start in range(0, len(ids), CANCEL_CHUNK):
            answer = self._http.post("/v1/tasks/cancel", {"task_ids": ids[start : start + CANCEL_CHUNK]})
            out.update((uuid.UUID(task_id), bool(cancelled)) for task_id, cancelled in answer.items())
        return out

    # --- activity -----------------------------------------------------------------------

    def activity(self, *, window_s: float = 60.0, failures: int = 10) -> dict[str, Any]:
        """Your tasks per endpoint (`waiting`, `running` now; `completed`, `failed`, `cancelled`
        within the last `window_s` seconds, on the service's clock) and your newest `failures`
        failed tasks of the last hour (`GET /v1/activity`; what `taskfabric top` shows)."""
        params = {"window_s": repr(float(window_s)), "failures": str(int(failures))}
        result: dict[str, Any] = self._http.get("/v1/activity", params=params)
        return result

    # --- listings -----------------------------------------------------------------------

    def list_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        endpoint_id: uuid.UUID | str | None = None,
        function_id: uuid.UUID | str | None = None,
        group_id: uuid.UUID | str | None = None,
        since: float | datetime.datetime | None = None,
        limit: int | None = None,
        page_size: int = 100,
        all_users: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Your tasks, newest first, matching every filter given: a generator that fetches pages
        of `page_size` (1 to 1000) as you iterate, following the service's cursors, and stops
        after `limit` tasks when given. Each item is a summary: `task_id`, `status`,
        `endpoint_id`, `function_id`, `task_group_id`, `created_at`, `started_at`,
        `completed_at`, `error_code`, `submitted_by` (no result: use `get_result`). `since` is a
        datetime or seconds since the epoch (tasks created at or after it). `all_users` (with
        `endpoint_id`, an endpoint you own or manage): every user's tasks on it."""
        if limit is not None and limit < 0:
            raise InvalidRequest(f"limit: expected a number of tasks >= 0, got {limit}")
        yielded = 0
        cursor: str | None = None
        while limit is None or yielded < limit:
            size = page_size if limit is None else min(page_size, limit - yielded)
            page = self.list_tasks_page(
                status=status,
                endpoint_id=endpoint_id,
                function_id=function_id,
                group_id=group_id,
                since=since,
                limit=size,
                cursor=cursor,
                all_users=all_users,
            )
            yield from page.tasks
            yielded += len(page.tasks)
            cursor = page.next_cursor
            if cursor is None:
                return

    def list_tasks_page(
        self,
        *,
        status: TaskStatus | str | None = None,
        endpoint_id: uuid.UUID | str | None = None,
        function_id: uuid.UUID | str | None = None,
        group_id: uuid.UUID | str | None = None,
        since: float | datetime.datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
        all_users: bool = False,
    ) -> TaskListPage:
        """One page of `list_tasks` (`GET /v1/tasks`); pass its `next_cursor` as `cursor` to get
        the next page with the same filters."""
        params: dict[str, str] = {"limit": str(limit)}
        filters = {"status": status, "endpoint_id": endpoint_id, "function_id": function_id, "group_id": group_id}
        for name, value in filters.items():  # a TaskStatus is a StrEnum: str() is its value
            if value is not None:
                params[name] = str(value)
        if since is not None:
            params["since"] = repr(since.timestamp() if isinstance(since, datetime.datetime) else float(since))
        if cursor is not None:
            params["cursor"] = cursor
        if all_users:
            params["all_users"] = "true"
        answer = self._http.get("/v1/tasks", params=params)
        return TaskListPage(tasks=list(answer["tasks"]), next_cursor=answer.get("next_cursor"))

    def get_task_group(self, task_group_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """Every task of a task group of yours (summaries as in `list_tasks`), oldest first.
        Empty for an unknown group, or another user's."""
        tasks = list(self.list_tasks(group_id=task_group_id, page_size=1000))
        tasks.reverse()
        return tasks

    # --- sharing: groups ----------------------------------------------------------------

    def create_group(self, name: str, description: str = "") -> dict[str, Any]:
        """Create a group you own; returns it (`group_id`, `name`, `members`, ...)."""
        result: dict[str, Any] = self._http.post("/v1/groups", {"name": name, "description": description})
        return result

    def list_groups(self) -> list[dict[str, Any]]:
        """The groups you belong to, each with `group_id`, `name`, `owner` and your `role`."""
        return list(self._http.get("/v1/groups")["groups"])

    def get_group(self, group_id: uuid.UUID | str) -> dict[str, Any]:
        """A group you belong to, with its `members` (`username`, `user_id`, `role`)."""
        result: dict[str, Any] = self._http.get(f"/v1/groups/{_group_id(group_id)}")
        return result

    def add_group_member(self, group_id: uuid.UUID | str, username: str, role: str = "member") -> dict[str, Any]:
        """Add a user (username or user id) to the group as `member` or `manager`, or change their
        role; returns the member."""
        path = f"/v1/groups/{_group_id(group_id)}/members"
        result: dict[str, Any] = self._http.post(path, {"user": username, "role": role}, idempotent=True)
        return result

    def remove_group_member(self, group_id: uuid.UUID | str, username: str) -> None:
        """Remove a member (username or user id); yourself to leave the group."""
        self._http.delete(f"/v1/groups/{_group_id(group_id)}/members/{quote(username, safe='')}")

    def delete_group(self, group_id: uuid.UUID | str) -> None:
        """Delete a group you own; its grants on endpoints and functions go with it."""
        self._http.delete(f"/v1/groups/{_group_id(group_id)}")

    def resolve_group(self, name_or_id: uuid.UUID | str) -> uuid.UUID:
        """The id of the group named `name_or_id` among the groups you belong to (a group id is
        returned as it is). Raises `NotFoundError` (`GROUP_NOT_FOUND`) for an unknown name and
        `InvalidRequest` (`AMBIGUOUS_GROUP`, listing the ids) when several groups have it."""
        return resolve_group_name(name_or_id, self.list_groups())


def _task_id(value: uuid.UUID | str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidRequest(f"{str(value)[:64]!r} is not a task id") from None


def _group_id(value: uuid.UUID | str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidRequest(
            f"{str(value)[:64]!r} is not a group id (use resolve_group to turn a name into one)",
            code="INVALID_GROUP_ID",
        ) from None


def resolve_group_name(name_or_id: uuid.UUID | str, groups: list[dict[str, Any]]) -> uuid.UUID:
    """`Client.resolve_group` on a listing already fetched (`list_groups()`)."""
    text = str(name_or_id).strip()
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    matches = [group for group in groups if group.get("name") == text]
    if not matches:
        raise NotFoundError(f"no group named {text[:128]!r} among your groups", code="GROUP_NOT_FOUND")
    if len(matches) > 1:
        choices = ", ".join(f"{group['group_id']} (owner {group.get('owner', '?')})" for group in matches)
        raise InvalidRequest(
            f"several of your groups are named {text!r}: name one by id: {choices}", code="AMBIGUOUS_GROUP"
        )
    return uuid.UUID(str(matches[0]["group_id"]))


def function_name(fn: Callable[..., Any]) -> str:
    """The name a function is registered under by default."""
    return str(getattr(fn, "__qualname__", getattr(fn, "__name__", "function")))


def task_status(info: dict[str, Any]) -> TaskStatus | None:
    """The task's status; None for a state this client does not know (a newer service's)."""
    try:
        return TaskStatus(str(info.get("status")))
    except ValueError:
        return None


def is_pending(info: dict[str, Any]) -> bool:
    """True while the task may still change (waiting, running, or a state unknown here)."""
    status = task_status(info)
    return status is None or status.pending


def outcome_of(info: dict[str, Any]) -> Any:
    """The value of a finished task's info, raising its failure or `TaskPending`."""
    status = task_status(info)
    task_id = info.get("task_id")
    details = info.get("details") or {}
    if status is TaskStatus.SUCCESS:
        return value_from_result(
            base64.b64decode(info["result"]), worker_python=details.get("worker_python", ""), task_id=task_id
        )
    if status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        error = dict(info.get("error") or {})
        if error.get("exception"):
            error["exception"] = base64.b64decode(error["exception"])
        raise exception_from_error(error, worker_python=details.get("worker_python", ""), task_id=task_id)
    raise TaskPending(task_id, str(info.get("status")))


def _principal(user: str | None, group: uuid.UUID | str | None) -> dict[str, str]:
    if (user is None) == (group is None):
        raise InvalidRequest("name exactly one of user or group")
    return {"user": user} if user is not None else {"group": str(group)}


def _names(grant: dict[str, Any], user: str | None, group: uuid.UUID | str | None) -> bool:
    """Whether an access document's grant is the one of `user` (by name or id) or `group`."""
    if user is not None:
        return user in (grant.get("user"), grant.get("user_id"))
    return grant.get("group") == str(group)


def _grant_request(grant: dict[str, Any]) -> dict[str, Any]:
    """An access document's grant as a PUT body's (users by id: a name may be ambiguous)."""
    named = {"user": grant["user_id"]} if grant.get("user_id") else {"group": grant["group"]}
    return {
        **named,
        "role": grant["role"],
        "max_waiting_tasks": grant.get("max_waiting_tasks"),
        "max_tasks_per_day": grant.get("max_tasks_per_day"),
    }


def _with_id(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {**endpoint, "id": endpoint.get("endpoint_id", endpoint.get("id"))}


def _grant_requests(access: dict[str, Any]) -> list[dict[str, str]]:
    """The grants of a `get_function_access` answer as a PUT names them (users by id)."""
    grants = []
    for grant in access["grants"]:
        if grant.get("user_id"):
            grants.append({"user": str(grant["user_id"])})
        elif grant.get("group"):
            grants.append({"group": str(grant["group"])})
    return grants


def _unique(grants: list[dict[str, str]]) -> list[dict[str, str]]:
    return [dict(items) for items in dict.fromkeys(tuple(sorted(grant.items())) for grant in grants)]
