"""Logging: every line carries the id of the request (or background job) it belongs to, as
text or as JSON lines (VSNAP_LOG_FORMAT=json) for log collectors."""
from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# Structured fields a log call may pass with extra={...}; JSON lines carry them as keys.
FIELDS = ("command", "rc", "duration", "method", "path", "status", "user", "session")


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name,
                "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        for key in FIELDS:
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class _Handler(logging.StreamHandler):
    _vsnap = True  # marks ours; looked up by name, so a reloaded module still recognises it


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Configures the root logger once per process."""
    root = logging.getLogger()
    if any(getattr(h, "_vsnap", False) for h in root.handlers):
        return
    handler = _Handler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
