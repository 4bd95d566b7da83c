"""Logging of every long-running command (``streamrec worker``, ``streamrec train-agent``).

``STREAMREC_LOG_FORMAT=text`` (default) keeps the one-line human format; ``json`` writes one
JSON object per line (``ts``, ``level``, ``logger``, ``message`` and the record's ``extra``
fields: batch id and size, model version, stage timings...), so that a log pipeline (Loki,
Elasticsearch, CloudWatch) can filter and aggregate on fields instead of parsing messages.

The configuration is a ``logging.config.dictConfig`` dict, because the faust worker installs
its own logging at start (mode's ``setup_logging`` clears the root handlers): the worker hands
the same dict to ``faust.Worker(logging_config=...)``, and every other command applies it with
``setup_logging``.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601 with ms), ``level``, ``logger``,
    ``message``, then the ``extra`` fields; ``exc`` holds a formatted traceback. A value JSON
    cannot represent is written as its ``str`` rather than losing the line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def logging_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """The ``dictConfig`` of ``level`` and ``fmt`` (``text`` or ``json``): one stderr handler
    on the root logger; existing loggers stay enabled (they were created at import)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"streamrec": formatter},
        "handlers": {
            "streamrec": {
                "class": "logging.StreamHandler",
                "formatter": "streamrec",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["streamrec"]},
    }


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger (replacing its handlers) for a command that is not a faust
    worker."""
    logging.config.dictConfig(logging_config(level, fmt))


__all__ = ["FORMATS", "JsonFormatter", "logging_config", "setup_logging"]
