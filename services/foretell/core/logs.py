"""Structured logging: JSON lines on stdout, configured once by main()."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

# Set by the server interceptor for the duration of an RPC.
rpc_method: contextvars.ContextVar[str] = contextvars.ContextVar("rpc_method", default="")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_SERVICE = "foretell"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line with severity, service, method and request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "severity": record.levelname,
            "service": _SERVICE,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if method := rpc_method.get():
            entry["method"] = method
        if rid := request_id.get():
            entry["request_id"] = rid
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json", service: str = "foretell") -> None:
    global _SERVICE
    _SERVICE = service
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
