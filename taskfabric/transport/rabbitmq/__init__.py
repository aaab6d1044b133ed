"""RabbitMQ transport on pika's SelectConnection. This is the only package that imports pika.

One IO thread runs pika's ioloop for the life of the transport; it owns the connection and every
channel. Other threads only schedule work onto it (`add_callback_threadsafe`). Channels:

- one *publish* channel in confirm mode: publishes are pipelined; a future per message resolves on
  the broker's ack (or fails on nack / return / channel close / connection loss / deadline);
- one channel per consumer, with its own prefetch, so a consumer failing (queue deleted, access
  refused, consumer_timeout) never disturbs the others;
- one *admin* channel for declares and deletes, used one operation at a time so that a channel
  closed by the broker can be attributed to the operation that caused it.

When the connection drops, unconfirmed publishes fail with `ConnectionLost` (their outcome is
unknown: callers retry, and duplicates are removed downstream by task id), consumers are
re-subscribed after reconnecting, and acks for deliveries of the old connection are dropped (the
broker already requeued them). Reconnects back off exponentially with jitter. Given several URLs
(the members of a RabbitMQ cluster), each reconnect goes to the next one. A confirm timeout or a
nack replaces the publish channel: on RabbitMQ 3.10 a channel can stay wedged on a quorum queue
whose leader moved (see `publishing`).

Modules, one role each (`RabbitTransport` is assembled from the parts):

- `connection`: `RabbitTransport` itself: the IO thread, connecting, reconnecting, closing;
- `publishing`: the confirm pipeline (outbox, unconfirmed publishes, deadlines);
- `consuming`: consumers, their channels, acks and re-subscriptions;
- `admin`: declares, deletes and queue inspection on the admin channel;
- `core`: what the parts share (the hand-over onto the IO thread); `errors`: pika's errors
  translated into taskfabric's.
"""

from __future__ import annotations

from taskfabric.transport.rabbitmq.connection import RabbitTransport
from taskfabric.transport.rabbitmq.errors import redact_url

__all__ = ["RabbitTransport", "redact_url"]
