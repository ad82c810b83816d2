"""HTTP basic auth on every request, through the auth service."""
from __future__ import annotations

from flask import Flask, current_app, g, request

from ..errors import AuthenticationError


def credentials():
    """The request's Authorization header, parsed; None when absent or malformed (a malformed
    header is just a failed login)."""
    try:
        return request.authorization
    except Exception:
        return None


def install_auth(app: Flask) -> None:
    @app.before_request
    def require_basic_auth():
        services = current_app.extensions["vsnap"]
        auth = credentials()
        if auth is not None and auth.type != "basic":
            raise AuthenticationError("Only HTTP basic authentication is supported")
        g.user = services.auth.authenticate(
            auth.username if auth else None,
            auth.password if auth else None,
            request.remote_addr or "unknown",
        )
