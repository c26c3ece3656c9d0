"""The worker's log format: one JSON object per line."""

from __future__ import annotations

import json
import logging
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, workflow_id, worker, workflow_name, path
    and attempt when known, then the details."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "event": event or "log",
            "workflow_id": getattr(record, "workflow_id", None),
            "worker": getattr(record, "worker", None),
        }
        for optional in ("workflow_name", "path", "attempt"):
            value = getattr(record, optional, None)
            if value is not None:
                line[optional] = value
        fields = getattr(record, "fields", None)
        if event is None:
            line["logger"] = record.name
            line["message"] = record.getMessage()
        elif isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
