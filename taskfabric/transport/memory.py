"""An in-memory broker and transport for unit tests of domain logic.

`MemoryBroker` keeps exchanges (direct, fanout) and queues in one process; `MemoryTransport` is a
`Transport` connected to it with the same observable contract as `RabbitTransport` (the contract
tests in tests/ run against both): confirmed publishes, mandatory routing, per-consumer prefetch,
manual acks, requeue with a delivery count, a delivery limit and dead-lettering driven by the same
queue arguments as RabbitMQ's quorum queues, and a validated `user_id`. Callbacks run on the
transport's own dispatcher thread, as they run on the IO thread of the real one.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import queue as queue_module
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from taskfabric.errors import (
    BrokerUnavailable,
    NotFound,
    PreconditionFailed,
    PublishRejected,
    Unroutable,
)
from taskfabric.logs import wrap_with_logs
from taskfabric.transport.base import (
    ConsumerHandle,
    Delivery,
    DeliveryCallback,
    ErrorCallback,
    ExchangeKind,
    OutgoingMessage,
    Transport,
)

__all__ = ["MemoryBroker", "MemoryTransport"]


@dataclasses.dataclass(slots=True)
class _Message:
    body: bytes
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    message_id: str | None
    user_id: str | None
    delivery_count: int = 0
    redelivered: bool = False


@dataclasses.dataclass(slots=True)
class _Queue:
    name: str
    arguments: dict[str, Any]
    ready: collections.deque[_Message] = dataclasses.field(default_factory=collections.deque)
    consumers: list[_MemoryConsumer] = dataclasses.field(default_factory=list)
    next_consumer: int = 0


class MemoryBroker:
    """Exchanges, bindings and queues shared by the `MemoryTransport`s connected to it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.exchanges: dict[str, ExchangeKind] = {"": "direct"}
        self.bindings: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)  # exchange -> {(queue, key)}
        self.queues: dict[str, _Queue] = {}
        self._tags = itertools.count(1)

    def next_tag(self) -> int:
        return next(self._tags)

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        kind = self.exchanges.get(exchange)
        if kind is None:
            raise NotFound(f"no exchange {exchange!r}")
        if exchange == "":
            target = self.queues.get(routing_key)
            return [target] if target else []
        names = {q for q, key in self.bindings[exchange] if kind == "fanout" or key == routing_key}
        return [self.queues[name] for name in sorted(names) if name in self.queues]

    def enqueue(self, target: _Queue, message: _Message) -> None:
        target.ready.append(message)
        self.dispatch(target)

    def dispatch(self, target: _Queue) -> None:
        """Hand ready messages to consumers with free prefetch, round robin."""
        while target.ready:
            consumer = self._pick_consumer(target)
            if consumer is None:
                return
            consumer.deliver(target.ready.popleft())

    def _pick_consumer(self, target: _Queue) -> _MemoryConsumer | None:
        count = len(target.consumers)
        for offset in range(count):
            consumer = target.consumers[(target.next_consumer + offset) % count]
            if consumer.can_take():
                target.next_consumer = (target.next_consumer + offset + 1) % count
                return consumer
        return None

    def give_back(self, target_name: str, message: _Message, *, requeue: bool) -> None:
        """A delivery returned by nack or by a closed consumer: requeue or dead-letter it."""
        target = self.queues.get(target_name)
        if target is None:
            return
        if not requeue:
            self.dead_letter(target, message, "rejected")
            return
        message.delivery_count += 1
        message.redelivered = True
        limit = target.arguments.get("x-delivery-limit")
        if isinstance(limit, int) and message.delivery_count > limit:
            self.dead_letter(target, message, "delivery_limit")
            return
        target.ready.appendleft(message)
        self.dispatch(target)

    def dead_letter(self, source: _Queue, message: _Message, reason: str) -> None:
        exchange = source.arguments.get("x-dead-letter-exchange")
        if not exchange or exchange not in self.exchanges:
            return
        headers = dict(message.headers)
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", source.name)
        headers.setdefault("x-first-death-exchange", message.exchange)
        key = source.arguments.get("x-dead-letter-routing-key", message.routing_key)
        dead = _Message(message.body, message.exchange, key, headers, message.message_id, message.user_id)
        for target in self.route(exchange, key):
            self.enqueue(target, dead)


class _MemoryConsumer(ConsumerHandle):
    def __init__(self, transport: MemoryTransport, target: _Queue, callback: DeliveryCallback, prefetch: int) -> None:
        self.queue = target.name
        self._transport = transport
        self._broker = transport.broker
        self._target = target
        self._callback = callback
        self._prefetch = prefetch
        self.unacked: dict[int, _Message] = {}
        self.paused = False
        self.cancelled = False

    def can_take(self) -> bool:
        return not self.paused and not self.cancelled and len(self.unacked) < self._prefetch

    def deliver(self, message: _Message) -> None:
        tag = self._broker.next_tag()
        self.unacked[tag] = message
        delivery = Delivery(
            body=message.body,
            exchange=message.exchange,
            routing_key=message.routing_key,
            headers=dict(
                message.headers, **({"x-delivery-count": message.delivery_count} if message.delivery_count else {})
            ),
            message_id=message.message_id,
            user_id=message.user_id,
            redelivered=message.redelivered,
            delivery_count=message.delivery_count,
            queue=self.queue,
            token=(self, self._transport.generation, tag),
        )
        self._transport.run_on_thread(lambda: self._callback(delivery))

    def settle(self, tag: int, *, ack: bool, requeue: bool) -> None:
        message = self.unacked.pop(tag, None)
        if message is None:
            return
        if not ack:
            self._broker.give_back(self.queue, message, requeue=requeue)
        self._broker.dispatch(self._target)

    def return_all(self) -> None:
        for tag in sorted(self.unacked):
            self._broker.give_back(self.queue, self.unacked.pop(tag), requeue=True)

    def cancel(self) -> None:
        with self._broker.lock:
            self.cancelled = True
            if self in self._target.consumers:
                self._target.consumers.remove(self)
            self.return_all()

    def pause(self) -> None:
        with self._broker.lock:
            self.paused = True

    def resume(self) -> None:
        with self._broker.lock:
            self.paused = False
            self._broker.dispatch(self._target)


class MemoryTransport(Transport):
    """A `Transport` on a `MemoryBroker` (for unit tests; not for production)."""

    def __init__(self, broker: MemoryBroker, *, username: str = "guest") -> None:
        self.broker = broker
        self._username = username
        self.generation = 0
        self._work: queue_module.SimpleQueue[Callable[[], None] | None] = queue_module.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._consumers: list[_MemoryConsumer] = []
        self._open = False

    @property
    def username(self) -> str:
        return self._username

    @property
    def connected(self) -> bool:
        return self._open

    def start(self, *, wait_s: float | None = 10.0) -> None:
        self._open = True
        self.generation += 1
        self._thread = threading.Thread(target=self._run, name="memory-broker-io", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if not self._open:
            return
        with self.broker.lock:
            self.generation += 1  # its delivery tags are stale now
            for consumer in self._consumers:  # a closed connection's consumers are gone, as on RabbitMQ
                consumer.cancel()  # (which requeues what they held unacked)
            self._consumers.clear()
        self._open = False
        self._work.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def drop_connection(self) -> None:
        """Simulate a lost connection: unacked deliveries go back, their tags become stale."""
        with self.broker.lock:
            self.generation += 1
            for consumer in self._consumers:
                consumer.return_all()

    def run_on_thread(self, fn: Callable[[], None]) -> None:
        self._work.put(fn)

    @wrap_with_logs
    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            item()

    def _check_open(self) -> None:
        if not self._open:
            raise BrokerUnavailable("the transport is closed")

    # --- publishing ---------------------------------------------------------------------

    def publish_many(self, messages: Iterable[OutgoingMessage]) -> list[Future[None]]:
        futures = []
        for message in messages:
            future: Future[None] = Future()
            try:
                self._publish_one(message)
                future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)
            futures.append(future)
        return futures

    def _publish_one(self, message: OutgoingMessage) -> None:
        self._check_open()
        if message.user_id is not None and message.user_id != self._username:
            raise PreconditionFailed(
                f"user_id property set to {message.user_id!r} but authenticated user was {self._username!r}"
            )
        with self.broker.lock:
            targets = self.broker.route(message.exchange, message.routing_key)
            if not targets:
                if message.mandatory:
                    raise Unroutable(message.exchange, message.routing_key)
                return
            if any(self._is_full(target) for target in targets):
                raise PublishRejected(f"queue full for {message.routing_key!r}")
            for target in targets:
                self.broker.enqueue(
                    target,
                    _Message(
                        bytes(message.body),
                        message.exchange,
                        message.routing_key,
                        dict(message.headers or {}),
                        message.message_id,
                        message.user_id,
                    ),
                )

    @staticmethod
    def _is_full(target: _Queue) -> bool:
        limit = target.arguments.get("x-max-length")
        return isinstance(limit, int) and len(target.ready) >= limit

    # --- consuming ----------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        on_delivery: DeliveryCallback,
        *,
        prefetch: int,
        on_error: ErrorCallback | None = None,
        timeout_s: float = 10.0,
    ) -> ConsumerHandle:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self._check_open()
        with self.broker.lock:
            target = self.broker.queues.get(queue)
            if target is None:
                raise NotFound(f"no queue {queue!r}")
            consumer = _MemoryConsumer(self, target, on_delivery, prefetch)
            target.consumers.append(consumer)
            self._consumers.append(consumer)
            self.broker.dispatch(target)
        return consumer

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, ack=True, requeue=False)

    def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        self._settle(delivery, ack=False, requeue=requeue)

    def _settle(self, delivery: Delivery, *, ack: bool, requeue: bool) -> None:
        consumer, generation, tag = delivery.token
        with self.broker.lock:
            if generation != self.generation:
                return  # stale: the "connection" it came on is gone and it was requeued
            consumer.settle(tag, ack=ack, requeue=requeue)

    # --- topology -----------------------------------------------------------------------

    def declare_exchange(self, name: str, kind: ExchangeKind, *, timeout_s: float = 10.0) -> None:
        if kind not in ("direct", "fanout"):
            raise ValueError(f"the memory broker supports direct and fanout exchanges, not {kind!r}")
        with self.broker.lock:
            existing = self.broker.exchanges.setdefault(name, kind)
            if existing != kind:
                raise PreconditionFailed(f"exchange {name!r} exists with type {existing!r}")

    def declare_queue(self, name: str, *, arguments: Mapping[str, Any] | None = None, timeout_s: float = 10.0) -> None:
        args = dict(arguments or {})
        with self.broker.lock:
            existing = self.broker.queues.get(name)
            if existing is None:
                self.broker.queues[name] = _Queue(name, args)
            elif existing.arguments != args:
                raise PreconditionFailed(f"queue {name!r} exists with other arguments")

    def bind_queue(self, queue: str, exchange: str, routing_key: str, *, timeout_s: float = 10.0) -> None:
        with self.broker.lock:
            if queue not in self.broker.queues:
                raise NotFound(f"no queue {queue!r}")
            if exchange not in self.broker.exchanges:
                raise NotFound(f"no exchange {exchange!r}")
            self.broker.bindings[exchange].add((queue, routing_key))

    def delete_queue(self, name: str, *, timeout_s: float = 10.0) -> None:
        with self.broker.lock:
            self.broker.queues.pop(name, None)
            for bound in self.broker.bindings.values():
                bound.difference_update({pair for pair in bound if pair[0] == name})

    def delete_exchange(self, name: str, *, timeout_s: float = 10.0) -> None:
        with self.broker.lock:
            self.broker.exchanges.pop(name, None)
            self.broker.bindings.pop(name, None)

    def queue_depth(self, name: str, *, timeout_s: float = 10.0) -> int:
        with self.broker.lock:
            target = self.broker.queues.get(name)
            if target is None:
                raise NotFound(f"no queue {name!r}")
            return len(target.ready)

    def take_one(self, name: str, *, timeout_s: float = 10.0) -> bytes | None:
        with self.broker.lock:
            target = self.broker.queues.get(name)
            if target is None:
                raise NotFound(f"no queue {name!r}")
            return target.ready.popleft().body if target.ready else None

    def queue_consumers(self, name: str, *, timeout_s: float = 10.0) -> int:
        with self.broker.lock:
            target = self.broker.queues.get(name)
            if target is None:
                raise NotFound(f"no queue {name!r}")
            return len(target.consumers)
