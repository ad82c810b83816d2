"""Errors gunicorn answers itself, before the application sees the request (a request line or
headers over its limits, a malformed request), as the API's error object instead of gunicorn's
HTML page. gunicorn_conf.py installs `write_error` in place of gunicorn.util.write_error."""
from __future__ import annotations

import json

from gunicorn.util import write_nonblock

_TYPES = {403: "PermissionDeniedError", 413: "PayloadTooLargeError"}


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "ValidationError" if status < 500 else "InternalError"


def error_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": {"message": message or reason, "type": error_type(status)}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1", "replace") + body


def write_error(sock, status_int, reason, mesg):
    """gunicorn.util.write_error's signature, with the spec's error object for a body."""
    write_nonblock(sock, error_response(int(status_int), str(reason), str(mesg)))
