"""pika's errors as taskfabric's (`taskfabric.errors.BrokerError` and below), and URLs safe to log."""

from __future__ import annotations

import ssl
import urllib.parse

import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed

from taskfabric.errors import AccessRefused, BrokerError, ConnectionLost, NotFound, PreconditionFailed

__all__ = ["redact_url", "translate_error"]


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (safe to log)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The SSL error behind a connection failure (pika wraps it once or twice), if there is one."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        nested = getattr(seen, "exception", None)  # pika's AMQPConnectorPhaseErrorBase
        seen = nested if isinstance(nested, BaseException) else (seen.__cause__ or seen.__context__)
    return None


def translate_error(exc: BaseException | None, default: type[BrokerError] = ConnectionLost) -> BrokerError:
    """Map a pika exception to taskfabric's error tree."""
    if isinstance(exc, AMQPConnectionWorkflowFailed) and exc.exceptions:
        exc = exc.exceptions[-1]  # the workflow's own repr says nothing: its last attempt's error does
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)):
        code, text = exc.reply_code, exc.reply_text
        by_code: dict[int, type[BrokerError]] = {403: AccessRefused, 404: NotFound, 406: PreconditionFailed}
        return by_code.get(code, default)(f"broker closed the channel: {code} {text}")
    if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError)):
        return AccessRefused(f"the broker refused the credentials: {exc}")
    if exc is None:
        return default("connection closed")
    tls_error = _tls_error(exc)
    if tls_error is not None:
        return default(
            f"TLS with the broker failed: {tls_error}. Check that the broker's certificate is signed by the CA "
            "you trust (broker_ca_file) and names the host in the URL"
        )
    detail = str(exc) or repr(exc.args[0] if len(exc.args) == 1 else exc.args)
    return default(f"{type(exc).__name__}: {detail}")
