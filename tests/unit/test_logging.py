"""A token in a logged URL is redacted before any handler writes it."""

import logging

from polder.common.logging import RedactTokens


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_uvicorn_websocket_lines_lose_their_token() -> None:
    r = record(
        '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1", 5000),
        "/v1/drivers/d1/feed?token=eyJhbGciOi.x.y&lang=nl",
    )
    assert RedactTokens().filter(r) is True
    assert r.getMessage() == (
        "('127.0.0.1', 5000) - "
        '"WebSocket /v1/drivers/d1/feed?token=[redacted]&lang=nl" [accepted]'
    )


def test_lines_without_a_token_are_left_alone() -> None:
    r = record("consumer %s joined", "billing")
    RedactTokens().filter(r)
    assert (r.msg, r.args) == ("consumer %s joined", ("billing",))
