"""The confirm pipeline: publishes wait in an outbox until the publish channel (confirm mode) is
open, then each future resolves on the broker's ack, or fails on nack / return / channel close /
connection loss / its deadline."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import pika
import pika.spec

from taskfabric.errors import BrokerUnavailable, PublishRejected, PublishTimeout, Unroutable
from taskfabric.transport.base import OutgoingMessage
from taskfabric.transport.rabbitmq.core import TransportCore
from taskfabric.transport.rabbitmq.errors import translate_error

__all__ = ["Publishing"]

log = logging.getLogger(__name__)

_PERSISTENT = pika.spec.PERSISTENT_DELIVERY_MODE
#: a nack replaces the publish channel at most this often (see `_recycle_after_nack`)
_NACK_RECYCLE_S = 1.0


@dataclasses.dataclass(slots=True, eq=False)
class _Pending:
    """A publish waiting to be sent or confirmed."""

    message: OutgoingMessage
    future: Future[None]
    deadline: float
    message_id: str
    returned: str | None = None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def succeed(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class Publishing(TransportCore):
    """`RabbitTransport`'s publishing part: one channel in confirm mode, pipelined publishes."""

    _confirm_timeout_s: float
    _message_ids: itertools.count[int]
    _sweep_timer: Any
    _pub_channel: Any
    _pub_next_tag: int
    _unconfirmed: collections.OrderedDict[int, _Pending]
    _by_message_id: dict[str, _Pending]
    _outbox: collections.deque[_Pending]
    _last_nack_recycle: float = 0.0

    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[Future[None]]:
        deadline = time.monotonic() + self._confirm_timeout_s
        batch = []
        for message in messages:
            message_id = message.message_id or f"tf-{next(self._message_ids)}"
            batch.append(_Pending(message, Future(), deadline, message_id))
        futures = [pending.future for pending in batch]
        if self._closing or self._closed.is_set():
            for pending in batch:
                pending.fail(BrokerUnavailable("the transport is closed"))
            return futures
        self._call_soon(lambda: self._enqueue(batch))
        return futures

    def _enqueue(self, batch: list[_Pending]) -> None:
        self._outbox.extend(batch)
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        channel = self._pub_channel
        while self._outbox and channel is not None and channel.is_open:
            pending = self._outbox.popleft()
            if pending.future.done():
                continue
            message = pending.message
            properties = pika.BasicProperties(
                delivery_mode=_PERSISTENT,
                content_type=message.content_type,
                headers=dict(message.headers) if message.headers else None,
                message_id=pending.message_id,
                user_id=message.user_id,
                timestamp=int(time.time()),
            )
            tag = self._pub_next_tag
            self._pub_next_tag += 1
            self._unconfirmed[tag] = pending
            self._by_message_id[pending.message_id] = pending
            channel.basic_publish(
                message.exchange, message.routing_key, message.body, properties, mandatory=message.mandatory
            )

    def _open_publish_channel(self) -> None:
        if self._connection is None or not self._connection.is_open:
            return
        self._connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_publish_channel_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_publish_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: self._publish_ready(channel)
        )

    def _publish_ready(self, channel: Any) -> None:
        self._pub_channel = channel
        self._pub_next_tag = 1
        self._connected.set()
        self._flush_outbox()

    def _on_publish_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._pub_channel:
            return
        self._pub_channel = None
        self._fail_unconfirmed(translate_error(reason))
        if self._connection is not None and self._connection.is_open and not self._closing:
            log.warning("publish channel closed: %s; reopening", reason)
            self._connection.channel(on_open_callback=self._on_publish_channel_open)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        pending = self._by_message_id.get(properties.message_id)
        if pending is not None:
            pending.returned = method.reply_text or "NO_ROUTE"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            while self._unconfirmed:
                first = next(iter(self._unconfirmed))
                if first > tag:
                    break
                self._settle(self._unconfirmed.pop(first), acked)
        else:
            pending = self._unconfirmed.pop(tag, None)
            if pending is not None:
                self._settle(pending, acked)

    def _settle(self, pending: _Pending, acked: bool) -> None:
        self._by_message_id.pop(pending.message_id, None)
        message = pending.message
        if pending.returned is not None:
            pending.fail(Unroutable(message.exchange, message.routing_key, pending.returned))
        elif acked:
            pending.succeed()
        else:
            pending.fail(
                PublishRejected(f"the broker rejected a message to {message.exchange!r}/{message.routing_key!r}")
            )
            self._recycle_after_nack()

    def _recycle_after_nack(self) -> None:
        """A nack can also come from a stale channel: on RabbitMQ 3.10 a channel opened while a
        quorum queue was electing a new leader (its old leader's node had died) kept nacking every
        publish to that queue for minutes, while a new channel's publishes were confirmed at once.
        So a nack replaces the publish channel, at most once per `_NACK_RECYCLE_S` (a queue that
        refuses publishes for a good reason, e.g. full with `reject-publish`, keeps refusing on
        the new channel and costs one channel open per period)."""
        now = time.monotonic()
        if now - self._last_nack_recycle < _NACK_RECYCLE_S:
            return
        self._last_nack_recycle = now
        channel = self._pub_channel
        if channel is not None and channel.is_open:
            log.warning("the broker rejected a publish: opening a new publish channel")
            channel.close()

    def _fail_unconfirmed(self, error: BaseException) -> None:
        for pending in self._unconfirmed.values():
            self._by_message_id.pop(pending.message_id, None)
            pending.fail(error)
        self._unconfirmed.clear()

    def _schedule_sweep(self) -> None:
        interval = max(0.05, min(0.5, self._confirm_timeout_s / 4))
        self._sweep_timer = self._ioloop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Fail publishes whose bounded wait is over (queued or unconfirmed)."""
        now = time.monotonic()
        while self._outbox and self._outbox[0].deadline <= now:
            self._outbox.popleft().fail(
                PublishTimeout(f"not sent within {self._confirm_timeout_s:g} s (broker unreachable)")
            )
        expired = 0
        for tag in list(self._unconfirmed):
            pending = self._unconfirmed[tag]
            if pending.deadline > now:
                break
            del self._unconfirmed[tag]
            self._by_message_id.pop(pending.message_id, None)
            pending.fail(PublishTimeout(f"no confirm from the broker within {self._confirm_timeout_s:g} s"))
            expired += 1
        if expired:
            self._recycle_publish_channel(expired)
        self._schedule_sweep()

    def _recycle_publish_channel(self, expired: int) -> None:
        """A publish the broker never confirms can wedge the channel for good: a quorum queue that
        lost its leader and was then deleted and declared again leaves the channel waiting for the
        old queue's answer, and later publishes to the new queue are never confirmed either. So
        after a confirm timeout the channel is replaced (its other unconfirmed publishes fail and
        are re-sent by their owners)."""
        channel = self._pub_channel
        if channel is not None and channel.is_open:
            log.warning("%d publishes were not confirmed in time: opening a new publish channel", expired)
            channel.close()
