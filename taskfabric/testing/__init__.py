"""Test helpers: a real broker for a test session, bounded waiting, unique names.

`broker_for_tests()` yields the broker named by `TASKFABRIC_TEST_AMQP_URL` (and its management
API, `TASKFABRIC_TEST_MANAGEMENT_URL`) when set, and otherwise starts a private RabbitMQ node from
broker_config/ in a temporary directory, stopping it afterwards. When neither is possible it raises
`BrokerUnavailable` with the reason and the command that fixes it: tests fail, they never skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from taskfabric.broker_config.node import RabbitNode
from taskfabric.errors import BrokerUnavailable

__all__ = ["AMQP_URL_ENV", "MANAGEMENT_URL_ENV", "BrokerUnderTest", "broker_for_tests", "unique_name", "wait_until"]

AMQP_URL_ENV = "TASKFABRIC_TEST_AMQP_URL"
MANAGEMENT_URL_ENV = "TASKFABRIC_TEST_MANAGEMENT_URL"

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerUnderTest:
    """A broker for tests: its URLs and, when private, the node (tests may restart it)."""

    amqp_url: str
    management_url: str | None
    node: RabbitNode | None


@contextlib.contextmanager
def broker_for_tests(directory: Path | None = None) -> Iterator[BrokerUnderTest]:
    """The external broker from the environment, or a private node for the duration."""
    external = os.environ.get(AMQP_URL_ENV)
    if external:
        yield BrokerUnderTest(external, os.environ.get(MANAGEMENT_URL_ENV) or None, None)
        return
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="taskfabric-broker-")))
        node = RabbitNode(directory / "node")
        try:
            info = node.start()
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(
                f"{exc}\nTests need a RabbitMQ broker: install rabbitmq-server (`make install` does it as root) "
                f"or set {AMQP_URL_ENV} (and {MANAGEMENT_URL_ENV}) to an existing one."
            ) from None
        try:
            yield BrokerUnderTest(info.amqp_url, info.management_url, node)
        finally:
            node.stop()


def wait_until(
    predicate: Callable[[], _T], *, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "condition"
) -> _T:
    """Poll `predicate` until it returns something truthy (returned), or raise `TimeoutError`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def unique_name(stem: str = "t") -> str:
    """A name no other test uses (for topology prefixes, queues, users)."""
    return f"{stem}-{secrets.token_hex(5)}"
