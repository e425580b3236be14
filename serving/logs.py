"""Operational logs: one JSON object per line on stderr (or plain text for a terminal).

Separate from the audit trail by design: logs are for operators (start, stop, faults,
warnings), the audit trail is the record of every request decision. Neither carries a
secret: keys, tokens and payloads are never passed to a logger. python-json-logger does
the formatting (a maintained library, rather than our own JSON encoder for log records).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "text":
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    # timestamp=True: ISO 8601 in UTC, as Log Analytics and Loki parse it.
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


def configure(level: str, fmt: LogFormat) -> None:
    """The root logger writes to stderr in ``fmt``; Hypercorn's error log goes there too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
