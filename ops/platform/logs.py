"""Logging: one JSON object per line (with trace_id/span_id) unless a person is watching.

`ALERTBRIDGE_LOG_FORMAT=json|text` overrides the choice (default: text on a
terminal, JSON otherwise); `ALERTBRIDGE_LOG_LEVEL` sets the level (INFO).
Secrets never reach a log: settings hold them in `Secret`, which hides its value.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from collections.abc import Mapping


class TraceContext(logging.Filter):
    """Adds the current span's trace_id and span_id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drops a record."""
        context = trace.get_current_span().get_span_context()
        record.trace_id = f"{context.trace_id:032x}" if context.is_valid else ""
        record.span_id = f"{context.span_id:016x}" if context.is_valid else ""
        return True


def setup(service: str, env: Mapping[str, str] = os.environ) -> None:
    """Configure the root logger for a process named `service`."""
    fmt = env.get("ALERTBRIDGE_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContext())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}{trace_id}{span_id}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(env.get("ALERTBRIDGE_LOG_LEVEL", "INFO").upper())
    # The HTTP client logs every URL it calls, and a URL can carry a webhook secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
