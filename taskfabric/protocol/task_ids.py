"""The task ids of a submission with an idempotency key (`submission_id`), shared by the forwarder
(which names the tasks) and the client (which knows them before the answer comes, to watch their
results on the stream while the submit is in flight: docs/api.md "Results stream")."""

from __future__ import annotations

import uuid

from taskfabric.ids import uuid_from_int

__all__ = ["submission_task_ids"]


def submission_task_ids(owner_id: uuid.UUID, submission_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """The same ids for every retry of one submission, and different ones for another user, or
    another batch size, using the same key. One name-based (v5) id per submission, and the task's
    index XORed into its low 32 bits (the node field: the version and variant bits stay), so the
    ids of one submission are distinct by construction and cost no hash each (a uuid5 per task
    cost more than the rest of a submit)."""
    if count > 1 << 32:
        raise ValueError("a submission holds at most 2**32 tasks")
    base = uuid.uuid5(submission_id, f"{owner_id}:{count}").int
    return [uuid_from_int(base ^ index) for index in range(count)]
