"""Structured logging: JSON lines on stdout, configured once by main().

Log lines carry names, codes and counts, never free text that may come from a caller's file or another
tenant: an exception's message can quote a line of the file being read (a CSV parser's error, a decoding
error), so failures are logged with `failure(exc)` (the type and where it was raised), not with
`log.exception`, and rejected calls with their code, reason and field names (core/interceptors.py).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import traceback
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


def failure(exc: BaseException, frames: int = 8) -> dict[str, Any]:
    """Log fields that say what failed and where, without the exception's message (and its causes' types)."""
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    causes: list[str] = []
    seen = exc.__cause__ or exc.__context__
    while seen is not None and len(causes) < 4:
        causes.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    fields: dict[str, Any] = {
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "where": [f"{'/'.join(f.filename.split('/')[-2:])}:{f.lineno} {f.name}" for f in stack],
    }
    if causes:
        fields["caused_by"] = causes
    return fields


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
