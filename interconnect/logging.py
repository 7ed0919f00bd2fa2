"""Structured JSON logs that carry the request or booking id across processes.

Each line is one JSON object: time, level, logger, message, the current request id (set by the web
middleware, the gRPC interceptors and Celery tasks from their own metadata) and any ``extra``
fields. ``LOG_FORMAT=json`` turns it on; the default is plain text for people.
"""

import datetime as dt
import json
import logging
from typing import Any

from registry.context import current_request_id

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            data["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data:
                data[key] = (
                    value if isinstance(value, str | int | float | bool | None) else repr(value)
                )
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class ClientErrorsShort(logging.Filter):
    """Drop the traceback of a request that ended in a client error (4xx): Django logs a 403
    with its ``PermissionDenied`` attached, which is the answer, not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
