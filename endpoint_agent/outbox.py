"""The agent's results on their way to the broker: waiting to be published, then published and
not yet confirmed (by publish ticket). The agent's loop thread owns it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from taskfabric.protocol import Result

__all__ = ["ResultOutbox"]


class ResultOutbox:
    """Results to publish (`pending`) and results published, awaiting the broker's confirm
    (`in_flight`, by ticket). At most `max_in_flight` publishes await confirms at once: under load,
    results gather meanwhile and leave together."""

    def __init__(self, *, max_in_flight: int) -> None:
        self.pending: list[Result] = []
        self.in_flight: dict[int, list[Result]] = {}
        self._in_flight_ids: set[uuid.UUID] = set()
        self._max_in_flight = max_in_flight

    def append(self, result: Result) -> None:
        self.pending.append(result)

    def extend(self, results: Iterable[Result]) -> None:
        self.pending.extend(results)

    @property
    def empty(self) -> bool:
        """Nothing to publish and nothing awaiting a confirm."""
        return not self.pending and not self.in_flight

    def take(self) -> list[Result]:
        """The results to publish now: every pending one, or none while `max_in_flight`
        publishes await their confirms."""
        if not self.pending or len(self.in_flight) >= self._max_in_flight:
            return []
        results, self.pending = self.pending, []
        return results

    def sent(self, ticket: int, results: list[Result]) -> None:
        """`results` were published as `ticket`."""
        self.in_flight[ticket] = results
        self._in_flight_ids.update(result.task_id for result in results)

    def settled(self, ticket: int, results: list[Result]) -> list[Result]:
        """The publish `ticket` (carrying `results`) was confirmed or failed: it is no longer in flight."""
        results = self.in_flight.pop(ticket, results)
        self._in_flight_ids.difference_update(result.task_id for result in results)
        return results

    def is_in_flight(self, task_id: uuid.UUID) -> bool:
        return task_id in self._in_flight_ids

    @property
    def tasks_in_flight(self) -> int:
        return len(self._in_flight_ids)

    def take_unconfirmed(self) -> list[Result]:
        """At exit: every result not confirmed (in flight, then pending); pending ones are taken."""
        unconfirmed = [result for chunk in self.in_flight.values() for result in chunk] + self.pending
        self.pending = []
        return unconfirmed
