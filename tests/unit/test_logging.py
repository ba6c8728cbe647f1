"""Bearer tokens are redacted from what the one log handler writes: uvicorn's WebSocket lines
(a stdlib record whose path carries ?token=) and structlog events alike."""

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from polder.common.logging import configure_logging

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkMSJ9.c2lnbmF0dXJl"


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """The services' JSON logging, written to a buffer; the suite's own logging (conftest)
    restored afterwards, so later tests log as before (structlog's defaults would render a
    rich traceback with locals for every exception a service logs: seconds of an event loop)."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", json=True)
    out = io.StringIO()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    try:
        yield out
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def test_uvicorn_websocket_lines_lose_their_token(written: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", f"/v1/drivers/d1/feed?token={TOKEN}&x=1"
    )
    line = written.getvalue()
    assert "/v1/drivers/d1/feed?token=[redacted]&x=1" in line
    assert TOKEN not in line


def test_structlog_events_lose_tokens_in_values_and_secret_keys(written: io.StringIO) -> None:
    log = structlog.get_logger("polder.test")
    log.info("client connected", url=f"ws://h/feed?token={TOKEN}", authorization=f"Bearer {TOKEN}")
    log.info("header seen", header=f"Bearer {TOKEN}", driver="d1")
    lines = written.getvalue().splitlines()
    assert len(lines) == 2, "no line may be lost"
    assert TOKEN not in written.getvalue()
    assert '"driver": "d1"' in lines[1] and "Bearer [redacted]" in lines[1]


def test_lines_without_a_token_are_left_alone(written: io.StringIO) -> None:
    structlog.get_logger("polder.test").info("consumer joined", consumer="billing")
    assert '"consumer": "billing"' in written.getvalue()
