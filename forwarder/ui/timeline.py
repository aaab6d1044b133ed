"""A task's timeline: its recorded moments, and the bar segments between them."""

from __future__ import annotations

import dataclasses
import itertools

from taskfabric.forwarder.records import TaskRecord

__all__ = ["Moment", "Segment", "timeline"]


@dataclasses.dataclass(frozen=True, slots=True)
class Moment:
    name: str
    at: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """The stretch from one moment to the next, as a share of the whole bar (0-100)."""

    name: str
    seconds: float
    left_pct: float
    width_pct: float


def timeline(record: TaskRecord) -> tuple[list[Moment], list[Segment]]:
    """The task's moments (None: not reached or not recorded) and the segments between the
    recorded ones. The forwarder publishes a task when it accepts it, so submitted = queued."""
    moments = [
        Moment("submitted", record.created_at),
        Moment("queued", record.created_at),
        Moment("received by the endpoint", record.received_at),
        Moment("started", record.started_at),
        Moment("finished", record.finished_at),
        Moment("result stored", record.completed_at),
    ]
    known = [moment for moment in moments if moment.at is not None]
    if len(known) < 2:
        return moments, []
    start, end = known[0].at or 0.0, known[-1].at or 0.0
    span = max(end - start, 1e-6)
    segments = []
    for before, after in itertools.pairwise(known):
        began, ended = before.at or 0.0, after.at or 0.0
        if ended < began:
            continue  # clocks of different hosts: skip what cannot be drawn
        segments.append(
            Segment(
                name=f"{before.name} → {after.name}",
                seconds=ended - began,
                left_pct=round((began - start) / span * 100, 2),
                width_pct=max(round((ended - began) / span * 100, 2), 0.5),
            )
        )
    return moments, segments
