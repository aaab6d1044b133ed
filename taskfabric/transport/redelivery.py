"""A delivery limit for queues whose broker keeps no delivery count (classic queues).

DESIGN. Quorum queues count the deliveries of each message (`x-delivery-count`) and dead-letter it
after `x-delivery-limit` returns: a poison message (one that crashes its consumer before the ack,
again and again) ends in the dead-letter queue, where the forwarder fails its tasks with a typed
`TaskDeadLettered` error. A classic queue only says whether a delivery may have been seen before
(the `redelivered` flag). So the consumer keeps the count *in the message*: a delivery flagged
`redelivered` is published again to its queue as a copy whose `x-taskfabric-returns` header says
how many times it came back, and the original is acked once the broker confirmed the copy; a
message back more than `limit` times goes to the dead-letter exchange instead, with the headers a
broker dead-lettering would give it (`x-first-death-reason: delivery_limit`). Deliveries that were
not redelivered pass straight through: the hot path pays nothing.

Nothing is lost on the way: the original is acked only after the copy (or the dead letter) is
confirmed; a crash in between delivers both, which the ledger (tasks) and the store (results)
already deduplicate by task id. A copy that cannot be published sends the original back unacked, a
second later; its header is unchanged, so a broker that refuses publishes for a while (a disk
alarm) does not use up the limit.

A copy is published by the consumer's own broker user (the broker checks `user_id`), so it names
the original publisher in `x-taskfabric-original-user`; that header is believed only on a message
whose broker-verified `user_id` is the consumer's own (nobody else can publish as that user).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from taskfabric.transport.base import Delivery, DeliveryCallback, OutgoingMessage, Transport

__all__ = [
    "ORIGINAL_USER_HEADER",
    "RETURNS_HEADER",
    "RedeliveryCounter",
    "RedeliveryLimit",
    "Verdict",
    "judge",
]

log = logging.getLogger(__name__)

#: how many times a message came back to its queue unacknowledged (its copies carry it)
RETURNS_HEADER = "x-taskfabric-returns"
#: the broker-verified publisher of the message a copy was made from ("" for none)
ORIGINAL_USER_HEADER = "x-taskfabric-original-user"
#: how long a message whose copy could not be published is held before it goes back to its queue
_RETRY_DELAY_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RedeliveryLimit:
    """How one classic queue's messages are counted: `limit` returns (as `x-delivery-limit`), then
    the dead-letter exchange. Copies go to `exchange` with the queue's name as the routing key."""

    limit: int
    exchange: str
    dead_letter_exchange: str

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("limit must be at least 1")


class Verdict(enum.Enum):
    """What to do with one delivery."""

    DELIVER = "deliver"
    COPY = "copy"
    DEAD_LETTER = "dead-letter"


def returns_of(headers: Mapping[str, Any]) -> int:
    """The returns a message's header records (0 when absent or not a count)."""
    value = headers.get(RETURNS_HEADER, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def judge(delivery: Delivery, limit: int) -> tuple[Verdict, int]:
    """The verdict on `delivery` and the message's returns counting this one."""
    returns = returns_of(delivery.headers)
    if not delivery.redelivered:
        return Verdict.DELIVER, returns
    returns += 1
    return (Verdict.DEAD_LETTER if returns > limit else Verdict.COPY), returns


class RedeliveryCounter:
    """Wraps a consumer's callback (use it as the `on_delivery` of `Transport.consume`)."""

    def __init__(self, transport: Transport, limit: RedeliveryLimit, callback: DeliveryCallback) -> None:
        self._transport = transport
        self._limit = limit
        self._callback = callback

    def __call__(self, delivery: Delivery) -> None:
        verdict, returns = judge(delivery, self._limit.limit)
        if verdict is Verdict.DELIVER:
            self._callback(self._as_seen(delivery, returns))
        elif verdict is Verdict.COPY:
            self._settle(delivery, self._copy(delivery, returns))
        else:
            log.warning(
                "a message of %s came back %d times (limit %d): dead-lettering it",
                delivery.queue,
                returns,
                self._limit.limit,
            )
            self._settle(delivery, self._dead_letter(delivery, returns))

    def _as_seen(self, delivery: Delivery, returns: int) -> Delivery:
        """The delivery as a quorum queue would have given it: its count, and its real publisher."""
        if not returns and ORIGINAL_USER_HEADER not in delivery.headers:
            return delivery
        user_id = delivery.user_id
        original = delivery.headers.get(ORIGINAL_USER_HEADER)
        if original is not None and user_id == self._transport.username:
            text = original.decode(errors="replace") if isinstance(original, bytes) else str(original)
            user_id = text or None
        return dataclasses.replace(delivery, user_id=user_id, redelivered=returns > 0, delivery_count=returns)

    def _headers(self, delivery: Delivery, returns: int) -> dict[str, Any]:
        headers = dict(delivery.headers)
        headers[RETURNS_HEADER] = returns
        if ORIGINAL_USER_HEADER not in headers or delivery.user_id != self._transport.username:
            headers[ORIGINAL_USER_HEADER] = delivery.user_id or ""
        return headers

    def _copy(self, delivery: Delivery, returns: int) -> Future[None]:
        return self._transport.publish(
            OutgoingMessage(
                exchange=self._limit.exchange,
                routing_key=delivery.queue,
                body=delivery.body,
                headers=self._headers(delivery, returns),
                message_id=delivery.message_id,
                user_id=self._transport.username,
            )
        )

    def _dead_letter(self, delivery: Delivery, returns: int) -> Future[None]:
        headers = self._headers(delivery, returns)
        headers.update(
            {
                "x-first-death-reason": "delivery_limit",
                "x-first-death-queue": delivery.queue,
                "x-delivery-count": returns,
            }
        )
        return self._transport.publish(
            OutgoingMessage(
                exchange=self._limit.dead_letter_exchange,
                routing_key=delivery.queue,
                body=delivery.body,
                headers=headers,
                message_id=delivery.message_id,
                user_id=self._transport.username,
            )
        )

    def _settle(self, delivery: Delivery, confirmed: Future[None]) -> None:
        def done(future: Future[None]) -> None:
            try:
                if future.exception() is None:
                    self._transport.ack(delivery)
                else:
                    log.warning(
                        "could not re-publish a message of %s (%s); returning it in %g s",
                        delivery.queue,
                        future.exception(),
                        _RETRY_DELAY_S,
                    )
                    timer = threading.Timer(_RETRY_DELAY_S, self._give_back, (delivery,))
                    timer.daemon = True
                    timer.start()
            except Exception:  # the transport closed: the broker requeues the original itself
                log.debug("could not settle a counted delivery", exc_info=True)

        confirmed.add_done_callback(done)

    def _give_back(self, delivery: Delivery) -> None:
        """Return the original unacked, its count unchanged (paced: a publish that fails at once,
        e.g. unroutable, must not spin the message between broker and consumer)."""
        try:
            self._transport.nack(delivery, requeue=True)
        except Exception:  # the transport closed: the broker requeues the original itself
            log.debug("could not return a counted delivery", exc_info=True)
