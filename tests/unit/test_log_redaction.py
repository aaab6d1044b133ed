"""Secrets never reach a log line: the redaction filter every handler of `setup_logging` carries,
and the demotion of uvicorn's spurious ERROR after a refused WebSocket handshake."""

from __future__ import annotations

import logging

import pytest

from taskfabric.forwarder.cli import _DeniedHandshakeFilter
from taskfabric.logs import RedactSecrets, redact_secrets

TOKEN = "tf_" + "Ab3_-" * 8 + "xyz"


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (f'127.0.0.1:5 - "WebSocket /v1/results/ws?token={TOKEN}" 403', "/v1/results/ws?token=[redacted]"),
        ("GET /x?a=1&access_token=eyJhbGciOi.payload.sig&b=2", "a=1&access_token=[redacted]&b=2"),
        ("> Authorization: Bearer AgGlobusT0ken", "> Authorization: Bearer [redacted]"),
        (f"the token {TOKEN} was used", "the token [redacted] was used"),
        ("amqp://ep-1:password=hunter2@host", "password=[redacted]"),
    ],
)
def test_secrets_are_redacted(line: str, kept: str) -> None:
    redacted = redact_secrets(line)
    assert kept in redacted
    for secret in (TOKEN, "eyJhbGciOi", "AgGlobusT0ken", "hunter2"):
        assert secret not in redacted


def test_lines_without_secrets_are_unchanged() -> None:
    line = "registered endpoint 5f0c (lab) of ada; tf_short is not a token"
    assert redact_secrets(line) == line


def test_the_filter_rewrites_the_record_with_its_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s"', ("peer", f"/ws?token={TOKEN}"), None
    )
    assert RedactSecrets().filter(record)
    assert TOKEN not in record.getMessage() and "token=[redacted]" in record.getMessage()


def test_uvicorns_unfinished_handshake_error_is_demoted_and_others_kept() -> None:
    spurious = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "ASGI callable returned without completing handshake.", None, None
    )
    other = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", None, None)
    handshakes = _DeniedHandshakeFilter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        assert handshakes.filter(spurious) is False and spurious.levelname == "DEBUG"
        assert handshakes.filter(other) is True and other.levelname == "ERROR"
    finally:
        root.setLevel(level)
