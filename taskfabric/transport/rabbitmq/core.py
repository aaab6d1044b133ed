"""What the parts of `RabbitTransport` share: the IO thread's loop and the hand-over onto it.

Everything here is touched on the IO thread only, except `_call_soon`, which any thread may call.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from pika.adapters.select_connection import IOLoop

from taskfabric.errors import BrokerUnavailable

__all__ = ["TransportCore"]

# Our own generator for backoff jitter: this I/O thread must not advance the process-wide `random`
# state that user code (and test tools such as hypothesis) may depend on.
_jitter = random.Random()


class TransportCore:
    """The state every part of the transport reads (set by `RabbitTransport.__init__`)."""

    _ioloop: IOLoop
    _connection: Any
    _connected: threading.Event
    _closing: bool
    _closed: threading.Event
    _backoff_initial_s: float
    _backoff_max_s: float

    def _call_soon(self, fn: Callable[[], None]) -> None:
        if self._closed.is_set():
            raise BrokerUnavailable("the transport is closed")
        self._ioloop.add_callback_threadsafe(fn)
