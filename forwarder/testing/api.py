"""A small HTTP client of the forwarder's API for tests."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import httpx

__all__ = ["ForwarderApi"]


class ForwarderApi:
    """Calls of the forwarder's API as one user (tests of other components may use it too)."""

    def __init__(self, url: str, token: str, *, username: str = "") -> None:
        self.url = url
        self.token = token
        self.username = username
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def register_function(self, body: bytes, *, name: str = "f", python_version: str = "3.11.7") -> str:
        response = self.http.post(
            "/v1/functions",
            json={"name": name, "body": base64.b64encode(body).decode(), "python_version": python_version},
        )
        response.raise_for_status()
        return str(response.json()["function_id"])

    def register_endpoint(self, name: str, **fields: Any) -> dict[str, Any]:
        response = self.http.post("/v1/endpoints", json={"name": name, **fields})
        response.raise_for_status()
        registration: dict[str, Any] = response.json()
        return registration

    def submit(
        self,
        endpoint_id: str,
        function_id: str,
        payloads: Sequence[bytes],
        *,
        binary: bool = True,
        client_python: str = "3.11.7",
        task_group_id: str | None = None,
    ) -> list[str]:
        """Submit one batch (msgpack, or JSON with `binary=False`), in task group `task_group_id`
        if given; returns the task ids."""
        import msgpack

        tasks: list[dict[str, Any]] = [{"function_id": function_id, "payload": payload} for payload in payloads]
        extra = {"task_group_id": task_group_id} if task_group_id is not None else {}
        if binary:
            response = self.http.post(
                f"/v1/endpoints/{endpoint_id}/tasks",
                content=msgpack.packb({"tasks": tasks, "client_python": client_python, **extra}),
                headers={"Content-Type": "application/msgpack"},
            )
            response.raise_for_status()
            return list(msgpack.unpackb(response.content)["task_ids"])
        for task in tasks:
            task["payload"] = base64.b64encode(task["payload"]).decode()
        response = self.http.post(
            f"/v1/endpoints/{endpoint_id}/tasks", json={"tasks": tasks, "client_python": client_python, **extra}
        )
        response.raise_for_status()
        return list(response.json()["task_ids"])

    def list_tasks(self, **params: Any) -> dict[str, Any]:
        """One page of `GET /v1/tasks` (raises on an error status)."""
        response = self.http.get("/v1/tasks", params={key: value for key, value in params.items() if value is not None})
        response.raise_for_status()
        page: dict[str, Any] = response.json()
        return page

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/tasks/{task_id}")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info

    def tasks(self, task_ids: Sequence[str]) -> dict[str, Any]:
        response = self.http.post("/v1/tasks/batch", json={"task_ids": list(task_ids)})
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/endpoints/{endpoint_id}")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info

    def __enter__(self) -> ForwarderApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
