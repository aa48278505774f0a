"""Structured logging: one JSON object per line when ``KINDLING_LOG_FORMAT=json``.

Log aggregators index fields, not sentences: the agents pass the event's context (``user``,
``topic``, ``partition``, ``offset``, ``event_id``) as ``extra=``; this formatter lifts those onto
the JSON object so an operator can query "all dead letters of partition 3". With the default
``text`` format the same context is already part of the message.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

CONTEXT_FIELDS = ("user", "topic", "partition", "offset", "event_id", "reason", "events",
                  "expected", "skipped", "last_seek")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", <context fields>, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value if isinstance(value, int | float | bool | dict) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def logging_config(fmt: str, level: str) -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` for ``faust.Worker(logging_config=...)``; ``None`` keeps
    Faust's own (coloured text) handler."""
    if fmt == "text":
        return None
    if fmt != "json":
        raise ValueError(f"unknown log format {fmt!r} (KINDLING_LOG_FORMAT: text | json)")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json",
                        "stream": "ext://sys.stdout"},
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure(fmt: str, level: str) -> None:
    """Root logging for the non-Faust commands (and for the worker before Faust takes over)."""
    config = logging_config(fmt, level)
    if config is None:
        logging.basicConfig(
            level=getattr(logging, level.upper(), logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    else:
        logging.config.dictConfig(config)
