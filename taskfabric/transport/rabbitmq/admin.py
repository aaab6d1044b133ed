"""Topology operations (declare, bind, delete, inspect) on the admin channel, one at a time, so
that a channel the broker closes is attributed to the operation that caused it."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from taskfabric.errors import BrokerUnavailable
from taskfabric.transport.base import ExchangeKind
from taskfabric.transport.rabbitmq.core import TransportCore
from taskfabric.transport.rabbitmq.errors import translate_error

__all__ = ["Admin"]


class Admin(TransportCore):
    """`RabbitTransport`'s admin part."""

    _admin_channel: Any
    _admin_waiting: collections.deque[Callable[[Any], None]]
    _admin_inflight: Future[Any] | None
    _admin_lock: threading.Lock

    def declare_exchange(self, name: str, kind: ExchangeKind, *, timeout_s: float = 10.0) -> None:
        self._admin(
            lambda ch, done: ch.exchange_declare(name, exchange_type=kind, durable=True, callback=done),
            f"declare exchange {name!r}",
            timeout_s,
        )

    def declare_queue(self, name: str, *, arguments: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> None:
        args = dict(arguments or {})
        self._admin(
            lambda ch, done: ch.queue_declare(name, durable=True, arguments=args, callback=done),
            f"declare queue {name!r}",
            timeout_s,
        )

    def bind_queue(self, queue: str, exchange: str, routing_key: str, *, timeout_s: float = 10.0) -> None:
        self._admin(
            lambda ch, done: ch.queue_bind(queue, exchange, routing_key=routing_key, callback=done),
            f"bind {queue!r} to {exchange!r}",
            timeout_s,
        )

    def delete_queue(self, name: str, *, timeout_s: float = 10.0) -> None:
        self._admin(lambda ch, done: ch.queue_delete(name, callback=done), f"delete queue {name!r}", timeout_s)

    def delete_exchange(self, name: str, *, timeout_s: float = 10.0) -> None:
        self._admin(lambda ch, done: ch.exchange_delete(name, callback=done), f"delete exchange {name!r}", timeout_s)

    def queue_depth(self, name: str, *, timeout_s: float = 10.0) -> int:
        frame = self._admin(
            lambda ch, done: ch.queue_declare(name, passive=True, callback=done),
            f"inspect queue {name!r}",
            timeout_s,
        )
        return int(frame.method.message_count)

    def take_one(self, name: str, *, timeout_s: float = 10.0) -> bytes | None:
        depth = self.queue_depth(name, timeout_s=timeout_s)
        if depth == 0:
            return None
        # with a ready message, basic.get answers get-ok (pika calls nothing on get-empty)
        body: bytes = self._admin(
            lambda ch, done: ch.basic_get(name, lambda _ch, _method, _props, data: done(data), auto_ack=True),
            f"take a message from {name!r}",
            timeout_s,
        )
        return body

    def queue_consumers(self, name: str, *, timeout_s: float = 10.0) -> int:
        frame = self._admin(
            lambda ch, done: ch.queue_declare(name, passive=True, callback=done),
            f"inspect queue {name!r}",
            timeout_s,
        )
        return int(frame.method.consumer_count)

    def _admin(self, operation: Callable[[Any, Callable[[Any], None]], None], what: str, timeout_s: float) -> Any:
        """Run one operation on the admin channel and wait for its answer."""
        with self._admin_lock:
            future: Future[Any] = Future()

            def run(channel: Any) -> None:
                self._admin_inflight = future

                def done(frame: Any) -> None:
                    self._admin_inflight = None
                    if not future.done():
                        future.set_result(frame)

                operation(channel, done)

            self._call_soon(lambda: self._with_admin_channel(run))
            try:
                return future.result(timeout=timeout_s)
            except TimeoutError:
                raise BrokerUnavailable(f"could not {what} within {timeout_s:g} s (broker unreachable?)") from None

    def _with_admin_channel(self, run: Callable[[Any], None]) -> None:
        if self._admin_channel is not None and self._admin_channel.is_open:
            run(self._admin_channel)
            return
        self._admin_waiting.append(run)
        if self._connection is not None and self._connection.is_open and len(self._admin_waiting) == 1:
            self._open_admin_channel()

    def _open_admin_channel(self) -> None:
        def on_open(channel: Any) -> None:
            self._admin_channel = channel
            channel.add_on_close_callback(self._on_admin_channel_closed)
            while self._admin_waiting:
                self._admin_waiting.popleft()(channel)

        self._connection.channel(on_open_callback=on_open)

    def _on_admin_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is self._admin_channel:
            self._admin_channel = None
        self._fail_admin_inflight(translate_error(reason))

    def _fail_admin_inflight(self, error: BaseException) -> None:
        future, self._admin_inflight = self._admin_inflight, None
        if future is not None and not future.done():
            future.set_exception(error)
