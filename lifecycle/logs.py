"""Logging: one line per decision, as text or JSON (`LIFECYCLE_LOG_FORMAT=json`) for log pipelines."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# The fields a decision line carries besides its message (passed with `extra=`).
FIELDS = ('session_id', 'reason', 'outcome', 'detail')


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the decision's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            'ts': datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec='milliseconds'),
            'level': record.levelname,
            'logger': record.name,
            'message': record.getMessage(),
        }
        data.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            data['exc'] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def use_json(logger: logging.Logger | None = None) -> None:
    """Switch every handler of `logger` (the root logger by default) to JSON lines."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
