"""Retrying submissions through short outages (a forwarder restart, a broker partition).

A submit request carries a `submission_id`; the service derives its task ids from it, so sending
the same request again after a 503, a timeout or a dropped connection never makes second tasks
(see `taskfabric.forwarder.tasks`). Only those failures are retried, and a 429 (`QuotaExceeded`)
whose `Retry-After` falls within the budget: the retry waits at least that long. A 429 asking for
a longer wait (a daily quota) is raised at once. Any other answer (400, 401, 403, 404, 413, 409)
is final.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from taskfabric.errors import QuotaExceeded, ServiceError

__all__ = ["RETRYABLE_STATUSES", "retry_transient"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: 0 = the forwarder could not be reached (refused, reset, timed out)
RETRYABLE_STATUSES = frozenset({0, 502, 503, 504})
_FIRST_DELAY_S = 0.2
_MAX_DELAY_S = 5.0
_jitter = random.Random()


def retry_transient(
    send: Callable[[], _T],
    *,
    budget_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """Call `send` until it succeeds, retrying transient failures with jittered exponential
    back-off for at most `budget_s` seconds; then the last failure is raised."""
    deadline = clock() + budget_s
    delay = _FIRST_DELAY_S
    attempt = 1
    while True:
        try:
            return send()
        except QuotaExceeded as exc:
            remaining = deadline - clock()
            if exc.retry_after_s > remaining:
                raise
            # the forwarder said when: at least that, with a little jitter so that a crowd spreads
            pause = min(exc.retry_after_s * (1.0 + 0.2 * _jitter.random()), remaining)
            log.warning("%s refused (attempt %d: %s); retrying in %.1f s", what, attempt, exc, pause)
            sleep(pause)
            attempt += 1
            continue
        except ServiceError as exc:
            remaining = deadline - clock()
            if exc.status not in RETRYABLE_STATUSES or remaining <= 0:
                raise
            pause = min(delay * (0.5 + _jitter.random()), remaining, _MAX_DELAY_S)
            log.warning("%s failed (attempt %d: %s); retrying in %.1f s", what, attempt, exc, pause)
            sleep(pause)
            delay = min(delay * 2, _MAX_DELAY_S)
            attempt += 1
