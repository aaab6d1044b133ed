"""The results stream: WebSocket connections subscribe to task ids and receive results as msgpack.

- `ResultHub` (event loop only) maps each watched task id to the subscribers waiting for it; the
  ingestor's `publish(records)` hands each newly finished task to its watchers, once.
- `StreamSubscriber` is one connection's state: ids it waits for (`pending`), a bounded memory of
  ids already sent (so a result goes out once per connection, even if subscribed again or reported
  twice), and an outbox of frames, sent in order (a subscription's replayed results, then its
  `unknown` ids; a `pong` after everything asked before the `ping`). Memory is bounded: a
  connection whose unsent results exceed `stream_buffer_bytes` is closed (code 1013; the client
  reconnects and re-subscribes), replays from the store wait for room, and a connection may wait
  for at most `max_subscriptions` ids.
- `serve_stream` runs one connection: a receive loop (subscribe / ping), a send loop, a poll
  loop that catches results stored by other forwarder replicas, and a guard loop that re-checks
  the connection's token every `recheck_s` (a revoked or expired token, a disabled or deleted
  user: the connection is closed with code 1008 and the refusal's error code as the reason).

Frames (all binary msgpack maps): client -> server ``{"subscribe": [ids]}``, ``{"expect": [ids]}``
(the ids of a submit in flight, `taskfabric.protocol.task_ids`: watched without a store lookup and
never reported unknown; a `subscribe` of them after the submit's answer confirms them),
``{"forget": [ids]}`` (stop waiting: a submit that failed), ``{"ping": x}``; server -> client
``{"results": [...]}``, ``{"unknown": [ids]}``, ``{"pong": x}``, ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgpack
from starlette.websockets import WebSocket, WebSocketDisconnect

from taskfabric.forwarder.recent import RecentIds
from taskfabric.forwarder.records import TaskRecord
from taskfabric.forwarder.store import Store, StoreRunner
from taskfabric.forwarder.views import task_result_frame
from taskfabric.ids import uuid_from_bytes

__all__ = ["Recheck", "ResultHub", "StreamLimits", "StreamSubscriber", "serve_stream"]

log = logging.getLogger(__name__)

#: a results frame stops growing past this many bytes of values (or `_FRAME_RESULTS` results)
_FRAME_BYTES = 1024 * 1024
_FRAME_RESULTS = 1000
#: ids fetched from the store per query when replaying a subscription
_REPLAY_CHUNK = 900
#: results committed just before a poll may carry a slightly older completion time
_POLL_MARGIN_S = 2.0
#: how many sent ids a connection remembers (to send each result once)
_SENT_MEMORY = 200_000
#: finished records the hub keeps for subscriptions that come just after (see `ResultHub`): at most
#: this many, holding at most this many outcome bytes, each outcome at most this large
_REMEMBERED_RECORDS = 4096
_REMEMBERED_BYTES = 8 * 1024 * 1024
_REMEMBERED_OUTCOME_BYTES = 64 * 1024
#: a Packer per thread (per event loop) packs the frames of every connection it serves: its
#: buffer, grown to the largest frame so far, is reused rather than grown again from 256 KiB for
#: each large result
_PACKERS = threading.local()
#: close code: "try again later" (the client re-subscribes on a new connection)
_CLOSE_OVERFLOW = 1013
#: close code: "policy violation" (the token is no longer accepted)
_CLOSE_POLICY = 1008
#: WebSocket close reasons are at most 123 bytes
_REASON_CHARS = 120

#: re-check the connection's token: None while it is accepted, else why not ("CODE: message")
Recheck = Callable[[], Awaitable[str | None]]


@dataclasses.dataclass(frozen=True, slots=True)
class StreamLimits:
    buffer_bytes: int = 64 * 1024 * 1024
    max_subscriptions: int = 1_000_000
    max_ids_per_frame: int = 10_000
    poll_s: float = 5.0


class StreamSubscriber:
    """One connection's subscriptions and outbox (touched only on the event loop).

    Subscriptions are keyed by the ids' integers: hashed in C, where a UUID hashes through a
    Python-level method (this runs for every task, several times)."""

    def __init__(self, owner_id: uuid.UUID, limits: StreamLimits) -> None:
        self.owner_id = owner_id
        self.limits = limits
        self.binary_ids = False
        self._pending: dict[int, uuid.UUID] = {}
        #: pending ids only expected (a submit in flight), not yet confirmed by a subscription
        self._expected: set[int] = set()
        self._sent: collections.OrderedDict[int, None] = collections.OrderedDict()
        # frames in order: results (grouped when sent) and control frames (unknown, pong, error)
        self._outbox: collections.deque[tuple[bool, dict[str, Any]]] = collections.deque()
        self.outbox_bytes = 0
        self.overflowed = False
        self.wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    @property
    def pending(self) -> collections.abc.ValuesView[uuid.UUID]:
        """The ids this connection waits for."""
        return self._pending.values()

    def waiting_for(self, task_id: uuid.UUID) -> bool:
        return task_id.int in self._pending

    def want(self, task_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Add ids to wait for; returns those new to this connection (not pending, not sent)."""
        pending, sent = self._pending, self._sent
        new = [task_id for task_id in task_ids if (key := task_id.int) not in pending and key not in sent]
        pending.update((task_id.int, task_id) for task_id in new)
        return new

    def expect(self, task_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Wait for the ids of a submit in flight; returns those new to this connection."""
        pending, sent, expected = self._pending, self._sent, self._expected
        new = [task_id for task_id in task_ids if (key := task_id.int) not in pending and key not in sent]
        for task_id in new:
            pending[task_id.int] = task_id
            expected.add(task_id.int)
        return new

    def confirm(self, task_ids: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Subscribed ids that were only expected until now (their submit was answered): they get
        a subscription's checks (finished before the expectation came, or unknown after all)."""
        expected = self._expected
        if not expected:
            return []
        confirmed = [task_id for task_id in task_ids if task_id.int in expected]
        expected.difference_update(task_id.int for task_id in confirmed)
        return confirmed

    def drop(self, task_id: uuid.UUID) -> None:
        self._pending.pop(task_id.int, None)
        self._expected.discard(task_id.int)

    def clear(self) -> None:
        self._pending.clear()
        self._expected.clear()

    def deliver(self, record: TaskRecord) -> bool:
        """Queue a finished task's result if this connection waits for it; True if queued."""
        key = record.task_id.int
        if key not in self._pending or record.owner_id != self.owner_id:
            return False
        del self._pending[key]
        self._expected.discard(key)
        self._remember_sent(key)
        self._outbox.append((True, task_result_frame(record, binary_id=self.binary_ids)))
        self.outbox_bytes += _frame_size(record)
        if self.outbox_bytes > self.limits.buffer_bytes:
            self.overflowed = True
        if self.outbox_bytes > self.limits.buffer_bytes // 2:
            self._room.clear()
        self.wakeup.set()
        return True

    def control(self, frame: dict[str, Any]) -> None:
        """Queue a control frame (unknown ids, pong, error), in order with the results."""
        self._outbox.append((False, frame))
        self.wakeup.set()

    def next_frame(self) -> dict[str, Any] | None:
        """The next frame to send: a control frame, or consecutive results grouped in one."""
        if not self._outbox:
            return None
        is_result, frame = self._outbox[0]
        if not is_result:
            self._outbox.popleft()
            return frame
        batch: list[dict[str, Any]] = []
        size = 0
        while self._outbox and self._outbox[0][0] and len(batch) < _FRAME_RESULTS and size < _FRAME_BYTES:
            frame = self._outbox.popleft()[1]
            batch.append(frame)
            size += _result_size(frame)
        self.outbox_bytes = max(0, self.outbox_bytes - size) if self._outbox else 0
        if self.outbox_bytes <= self.limits.buffer_bytes // 2:
            self._room.set()
        return {"results": batch}

    async def wait_for_room(self) -> None:
        """Wait until the outbox is at most half full (replays pace themselves with this)."""
        await self._room.wait()

    def _remember_sent(self, key: int) -> None:
        self._sent[key] = None
        if len(self._sent) > _SENT_MEMORY:
            self._sent.popitem(last=False)


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _frame_size(record: TaskRecord) -> int:
    return 128 + len(record.result or b"") + len(record.error_exception or b"") + len(record.error_traceback or "")


def _result_size(frame: dict[str, Any]) -> int:
    error = frame.get("error") or {}
    return 128 + len(frame.get("value") or b"") + len(error.get("exception") or b"") + len(error.get("traceback") or "")


class ResultHub:
    """Task id -> the subscribers waiting for it (event loop only).

    `publish` serves tasks this replica finished and passes their ids to `announce` (the fan-out
    to other replicas, forwarder/replicas.py, when there are any); `publish_from_peer` serves
    tasks another replica finished and announces nothing."""

    def __init__(self) -> None:
        self._watchers: dict[int, StreamSubscriber | list[StreamSubscriber]] = {}  # keyed by id.int
        self.recently_accepted: RecentIds[uuid.UUID] = RecentIds()
        self.recently_finished: RecentIds[bool] = RecentIds()
        self.announce: Callable[[list[uuid.UUID]], None] | None = None
        #: the last finished records with small outcomes, by id.int (oldest first): a subscription
        #: that arrives just after its task finished (an interactive client subscribes once its
        #: submit is answered; a fast task can finish before that) is answered from here, without
        #: a store read on a reader thread
        self._finished: collections.OrderedDict[int, TaskRecord] = collections.OrderedDict()
        self._finished_bytes = 0

    @property
    def watched(self) -> int:
        return len(self._watchers)

    def watch(self, subscriber: StreamSubscriber, task_ids: Iterable[uuid.UUID]) -> None:
        watchers = self._watchers
        for task_id in task_ids:
            key = task_id.int
            current = watchers.get(key)
            if current is None:
                watchers[key] = subscriber
            elif isinstance(current, list):
                if subscriber not in current:
                    current.append(subscriber)
            elif current is not subscriber:
                watchers[key] = [current, subscriber]

    def unwatch(self, subscriber: StreamSubscriber, task_ids: Iterable[uuid.UUID]) -> None:
        watchers = self._watchers
        for task_id in task_ids:
            key = task_id.int
            current = watchers.get(key)
            if current is subscriber:
                del watchers[key]
            elif isinstance(current, list) and subscriber in current:
                current.remove(subscriber)
                if len(current) == 1:
                    watchers[key] = current[0]

    def detach(self, subscriber: StreamSubscriber) -> None:
        self.unwatch(subscriber, list(subscriber.pending))
        subscriber.clear()

    def accepted(self, task_ids: Sequence[uuid.UUID], owner_id: uuid.UUID) -> None:
        """Tasks just accepted from `owner_id` (their owner need not be read from the store when
        they are subscribed to soon)."""
        self.recently_accepted.add_many(task_ids, owner_id)

    def publish(self, records: Sequence[TaskRecord]) -> None:
        """Hand tasks this replica finished to their watchers, and announce them to its peers."""
        self.publish_from_peer(records)
        if self.announce is not None and records:
            self.announce([record.task_id for record in records])

    def finished_elsewhere(self, task_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Another replica finished these tasks: remember that (a subscription that comes later
        looks them up in the store); returns those some subscriber here waits for."""
        self.recently_finished.add_many(task_ids, True)
        watchers = self._watchers
        return [task_id for task_id in task_ids if task_id.int in watchers]

    def publish_from_peer(self, records: Iterable[TaskRecord]) -> None:
        """Hand finished tasks (read from the store) to their watchers; announces nothing."""
        records = list(records)
        self.recently_finished.add_many((record.task_id for record in records), True)
        unwatched: list[TaskRecord] = []
        for record in records:
            watchers = self._watchers.pop(record.task_id.int, None)
            if watchers is None:
                unwatched.append(record)
                continue
            for subscriber in watchers if isinstance(watchers, list) else (watchers,):
                subscriber.deliver(record)
        # only results nobody here waited for: a watcher got its result already (and each
        # connection sends a result once), a client that subscribes a moment late did not
        self._remember(unwatched)

    def _remember(self, records: Sequence[TaskRecord]) -> None:
        finished = self._finished
        for record in records:
            size = _outcome_bytes(record)
            if size > _REMEMBERED_OUTCOME_BYTES or record.task_id.int in finished:
                continue
            finished[record.task_id.int] = record
            self._finished_bytes += size
        while finished and (len(finished) > _REMEMBERED_RECORDS or self._finished_bytes > _REMEMBERED_BYTES):
            _key, oldest = finished.popitem(last=False)
            self._finished_bytes -= _outcome_bytes(oldest)

    def deliver_remembered(self, subscriber: StreamSubscriber, task_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Deliver the subscriber's tasks that finished moments ago from memory; returns the ids
        still to look up in the store."""
        finished = self._finished
        if not finished:
            return list(task_ids)
        rest: list[uuid.UUID] = []
        settled: list[uuid.UUID] = []
        for task_id in task_ids:
            record = finished.get(task_id.int)
            if record is not None and record.owner_id == subscriber.owner_id:
                subscriber.deliver(record)
                settled.append(task_id)
            else:
                rest.append(task_id)
        if settled:
            self.unwatch(subscriber, settled)
        return rest


def _outcome_bytes(record: TaskRecord) -> int:
    """What a remembered record holds beyond its fixed fields."""
    return (
        len(record.result or b"")
        + len(record.error_exception or b"")
        + len(record.error_message or "")
        + len(record.error_traceback or "")
        + len(record.stdout or "")
        + len(record.stderr or "")
    )


# --- one connection -----------------------------------------------------------------------


async def serve_stream(
    websocket: WebSocket,
    owner_id: uuid.UUID,
    *,
    hub: ResultHub,
    store: Store,
    runner: StoreRunner,
    limits: StreamLimits,
    recheck: Recheck | None = None,
    recheck_s: float = 60.0,
) -> None:
    """Run an accepted WebSocket until the client leaves (or falls too far behind, or its token
    stops being accepted: `recheck` is called every `recheck_s`)."""
    subscriber = StreamSubscriber(owner_id, limits)
    connection = _Connection(websocket, subscriber, hub, store, runner)
    sender = asyncio.create_task(connection.send_loop(), name="stream-send")
    poller = asyncio.create_task(connection.poll_loop(), name="stream-poll") if limits.poll_s > 0 else None
    guard = (
        asyncio.create_task(connection.guard_loop(recheck, recheck_s), name="stream-guard")
        if recheck is not None
        else None
    )
    try:
        await connection.receive_loop({task for task in (sender, guard) if task is not None})
    finally:
        for task in (sender, poller, guard):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        hub.detach(subscriber)


class _Connection:
    def __init__(
        self, websocket: WebSocket, subscriber: StreamSubscriber, hub: ResultHub, store: Store, runner: StoreRunner
    ) -> None:
        self.websocket = websocket
        self.subscriber = subscriber
        self.hub = hub
        self.store = store
        self.runner = runner

    async def receive_loop(self, closers: set[asyncio.Task[None]]) -> None:
        """Handle the client's frames until it leaves or one of `closers` (the send loop, the
        guard loop) ends: they end when they closed the connection (or the client went away)."""
        receive = asyncio.ensure_future(self.websocket.receive())
        try:
            while True:
                done, _ = await asyncio.wait({receive, *closers}, return_when=asyncio.FIRST_COMPLETED)
                if not closers.isdisjoint(done):
                    return
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    return
                await self.handle(message.get("bytes"), message.get("text"))
                receive = asyncio.ensure_future(self.websocket.receive())
        finally:
            receive.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await receive

    async def handle(self, data: bytes | None, text: str | None) -> None:
        if data is None:
            self._error("frames must be binary msgpack maps")
            return
        try:
            frame = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception:  # msgpack raises many types on garbage
            self._error("the frame is not valid msgpack")
            return
        if type(frame) is not dict:
            self._error("a frame must be a map")
            return
        if "ping" in frame:
            self.subscriber.control({"pong": frame["ping"]})
        if "subscribe" in frame:
            await self.subscribe(frame["subscribe"])
        elif "expect" in frame:
            self.expect(frame["expect"])
        elif "forget" in frame:
            self.forget(frame["forget"])
        elif "ping" not in frame:
            self._error("unknown frame: expected 'subscribe', 'expect', 'forget' or 'ping'")

    async def subscribe(self, raw_ids: Any) -> None:
        parsed = self._frame_ids("subscribe", raw_ids)
        if parsed is None:
            return
        ids, unknown = parsed
        limits = self.subscriber.limits
        room = limits.max_subscriptions - len(self.subscriber.pending)
        if len(ids) > room:
            self._error(f"subscribe: at most {limits.max_subscriptions} unfinished subscriptions per connection")
            ids = ids[: max(0, room)]
        confirmed = self.subscriber.confirm(ids)
        new = self.subscriber.want(ids)
        self.hub.watch(self.subscriber, new)
        new.extend(confirmed)
        new = self.hub.deliver_remembered(self.subscriber, self._needing_a_lookup(new))
        for start in range(0, len(new), _REPLAY_CHUNK):
            chunk = new[start : start + _REPLAY_CHUNK]
            # results kept in the blob store are not read: they go as references (the client
            # downloads each), so a replay holds no more than the rows' own bytes
            records = await self.runner.read(self.store.tasks.get_many, chunk, results=False)
            unknown.extend(await self._replay(chunk, records))
        if unknown:
            self.subscriber.control({"unknown": unknown})

    def expect(self, raw_ids: Any) -> None:
        """Watch the ids of the client's submit in flight (no lookup: they may not exist yet)."""
        ids = self._checked_ids("expect", raw_ids)
        if ids is None:
            return
        self.hub.watch(self.subscriber, self.subscriber.expect(ids))

    def forget(self, raw_ids: Any) -> None:
        """Stop waiting for these ids (the client's submit failed, or it gave up on them)."""
        ids = self._checked_ids("forget", raw_ids, room=False)
        if ids is None:
            return
        for task_id in ids:
            self.subscriber.drop(task_id)
        self.hub.unwatch(self.subscriber, ids)

    def _frame_ids(self, verb: str, raw_ids: Any) -> tuple[list[uuid.UUID], list[str]] | None:
        """A frame's ids and its entries that are not ids; None (an error frame queued) when it is
        not a list of at most `max_ids_per_frame` entries. Bin ids make the answers use bin ids."""
        limits = self.subscriber.limits
        if type(raw_ids) is not list or len(raw_ids) > limits.max_ids_per_frame:
            self._error(f"{verb}: expected a list of at most {limits.max_ids_per_frame} task ids")
            return None
        if raw_ids and type(raw_ids[0]) is bytes:
            self.subscriber.binary_ids = True  # answer in the form the client uses
        return _parse_ids(raw_ids)

    def _checked_ids(self, verb: str, raw_ids: Any, *, room: bool = True) -> list[uuid.UUID] | None:
        """`_frame_ids` for `expect` and `forget`: refused whole if an entry is not an id or (with
        `room`) the connection would wait for more than `max_subscriptions` ids."""
        parsed = self._frame_ids(verb, raw_ids)
        if parsed is None:
            return None
        ids, malformed = parsed
        if malformed:
            self._error(f"{verb}: {len(malformed)} entries are not task ids (UUID strings or 16-byte bin)")
            return None
        limits = self.subscriber.limits
        if room and len(ids) > limits.max_subscriptions - len(self.subscriber.pending):
            self._error(f"{verb}: at most {limits.max_subscriptions} unfinished subscriptions per connection")
            return None
        return ids

    def _needing_a_lookup(self, task_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        """Tasks this forwarder accepted from this owner moments ago and has not seen finish
        are pending for sure: their results will come through the hub (which they now watch).
        Only the others are looked up in the store."""
        accepted, finished, owner = self.hub.recently_accepted, self.hub.recently_finished, self.subscriber.owner_id
        return [task_id for task_id in task_ids if accepted.get(task_id) != owner or task_id in finished]

    async def _replay(self, chunk: Sequence[uuid.UUID], records: dict[uuid.UUID, TaskRecord]) -> list[str]:
        """Deliver the finished tasks of `chunk`, each once there is room in the outbox (a replay
        never overflows it: only results the client does not read do); returns the unknown ids."""
        unknown: list[str] = []
        settled: list[uuid.UUID] = []
        for task_id in chunk:
            record = records.get(task_id)
            if record is None or record.owner_id != self.subscriber.owner_id:
                unknown.append(str(task_id))
                self.subscriber.drop(task_id)
                settled.append(task_id)
            elif record.finished:
                await self.subscriber.wait_for_room()
                self.subscriber.deliver(record)  # False if a live result went first
                settled.append(task_id)
        self.hub.unwatch(self.subscriber, settled)
        return unknown

    async def send_loop(self) -> None:
        subscriber = self.subscriber
        while True:
            await subscriber.wakeup.wait()
            subscriber.wakeup.clear()
            if subscriber.overflowed:
                log.warning("closing a results stream that fell too far behind")
                await self.websocket.close(code=_CLOSE_OVERFLOW, reason="too many unsent results: re-subscribe")
                return
            while (frame := subscriber.next_frame()) is not None:
                await self.websocket.send_bytes(_packer().pack(frame))

    async def guard_loop(self, recheck: Recheck, period_s: float) -> None:
        """Close the connection once its token is refused (revoked, expired, user disabled or
        deleted); an identity provider that cannot answer keeps it open (`recheck` says None)."""
        while True:
            await asyncio.sleep(period_s)
            refusal = await recheck()
            if refusal is not None:
                log.info("closing a results stream of user %s: %s", self.subscriber.owner_id, refusal)
                with contextlib.suppress(Exception):  # the client may be gone already
                    await self.websocket.close(code=_CLOSE_POLICY, reason=refusal[:_REASON_CHARS])
                return

    async def poll_loop(self) -> None:
        """Deliver results stored by other replicas (this one's arrive through the hub)."""
        since = time.time()
        while True:
            await asyncio.sleep(self.subscriber.limits.poll_s)
            started = time.time()
            if self.subscriber.pending:
                await self._poll(since - _POLL_MARGIN_S)
            since = started

    async def _poll(self, since: float) -> None:
        finished = await self.runner.read(self.store.tasks.finished_since_hex, self.subscriber.owner_id, since)
        pending = {task_id.hex: task_id for task_id in self.subscriber.pending}
        hits = [pending[task_hex] for task_hex in finished if task_hex in pending]
        if not hits:
            return
        records = await self.runner.read(self.store.tasks.get_many, hits, results=False)  # blobs by reference
        delivered = [task_id for task_id, record in records.items() if self.subscriber.deliver(record)]
        self.hub.unwatch(self.subscriber, delivered)

    def _error(self, message: str) -> None:
        self.subscriber.control({"error": {"code": "INVALID_REQUEST", "message": message}})


def _parse_ids(raw_ids: list[Any]) -> tuple[list[uuid.UUID], list[str]]:
    """Ids as UUID strings or as 16-byte bin (cheaper); anything else is reported unknown."""
    ids: dict[uuid.UUID, None] = {}
    unknown: list[str] = []
    for raw in raw_ids:
        kind = type(raw)
        if kind is bytes and len(raw) == 16:
            ids[uuid_from_bytes(raw)] = None
            continue
        try:
            if kind is not str or len(raw) > 64:
                raise ValueError
            ids[uuid.UUID(raw)] = None
        except ValueError:
            unknown.append(raw if kind is str and len(raw) <= 64 else repr(raw)[:64])
    return list(ids), unknown
