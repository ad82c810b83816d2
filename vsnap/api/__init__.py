"""The HTTP API: one blueprint per resource, every error as the spec's error object."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid

import marshmallow as ma
from flask import Flask, current_app, g, jsonify, request, send_from_directory
from flask_smorest import Api as SmorestApi
from werkzeug.exceptions import HTTPException

from ..errors import (
    ApiError,
    AuthenticationError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    TooManyRequestsError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from ..logs import request_id_var
from ..services import system_error
from ..services.catalog import fresh_reads
from . import (
    audit,
    disk,
    host,
    metrics,
    network,
    partner,
    pool,
    relationship,
    session,
    share,
    snapshot,
    system,
    target,
    user,
    volume,
)
from .auth import credentials, install_auth
from .common import ErrorSchema, Id, validation_error_from

log = logging.getLogger(__name__)

BLUEPRINTS = (system.blp, user.blp, network.blp, target.blp, disk.blp, pool.blp, volume.blp,
              snapshot.blp, share.blp, host.blp, partner.blp, relationship.blp, session.blp, audit.blp,
              metrics.blp)
CHANGES = ("POST", "PUT", "PATCH", "DELETE")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Errors any operation may answer with, documented on every operation of the OpenAPI document.
COMMON_ERRORS = {
    "400": "Bad input (ValidationError, InvalidCandidateError)",
    "401": "Missing or wrong credentials (AuthenticationError)",
    "403": "The account lacks the vsnap_admin role (PermissionDeniedError)",
    "404": "No such object (NotFoundError)",
    "405": "Method not allowed (MethodNotAllowedError)",
    "409": "Conflicts with the current state (ConflictError)",
    "413": "The request body is over the 1 MiB limit (PayloadTooLargeError)",
    "414": "The request line (URL) is too long (ValidationError, from the HTTP server)",
    "429": "Too many failed logins from this address (TooManyRequestsError)",
    "431": "A request header or the headers together are too large (ValidationError, from the HTTP server)",
    "500": "Unexpected failure, logged with a request id (InternalError)",
    "503": "A storage command timed out or a service is down (ServiceUnavailableError)",
}


class Api(SmorestApi):
    ERROR_SCHEMA = ErrorSchema

    def _openapi_json(self):
        doc = self.spec.to_dict()
        error_ref = {"$ref": "#/components/schemas/Error"}
        for path_item in doc.get("paths", {}).values():
            for method, operation in path_item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                responses.pop("default", None)
                for code, description in COMMON_ERRORS.items():
                    responses.setdefault(code, {
                        "description": description,
                        "content": {"application/json": {"schema": error_ref}},
                    })
                operation.setdefault("security", [{"basicAuth": []}])
        return self._app.response_class(
            json.dumps(doc, indent=2), mimetype="application/json")


def _error_response(err: ApiError):
    response = jsonify(err.to_dict())
    response.status_code = err.status
    if isinstance(err, AuthenticationError):
        response.headers["WWW-Authenticate"] = 'Basic realm="vsnap", charset="UTF-8"'
    if isinstance(err, TooManyRequestsError) and err.extra.get("retry_after"):
        response.headers["Retry-After"] = str(err.extra["retry_after"])
    return response


def _from_http_exception(exc: HTTPException) -> ApiError:
    data = getattr(exc, "data", None) or {}
    if exc.code in (400, 422) and data.get("messages"):
        return validation_error_from(data["messages"])
    if exc.code == 404:
        return NotFoundError(f"No such endpoint: {request.method} {request.path}")
    if exc.code == 405:
        return MethodNotAllowedError(f"Method {request.method} is not allowed on {request.path}")
    if exc.code == 413:
        return PayloadTooLargeError("Request body is too large")
    if exc.code == 415:
        return UnsupportedMediaTypeError("Request body must be JSON")
    if exc.code and exc.code < 500:
        err = ValidationError(exc.description or exc.name)
        err.status = exc.code
        return err
    return InternalError("Internal error")


def _body_for_audit():
    """The request's JSON body, if it has one it is allowed to have: a refused oversized body
    is never read (reading it would raise 413 again, now inside the response's hook)."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None and limit is not None and request.content_length > limit:
        return None
    try:
        return request.get_json(silent=True)
    except HTTPException:
        return None


def _claimed_user() -> str | None:
    """The user name a request claimed (for a refused one, which has no authenticated user)."""
    auth = credentials()
    return auth.username[:256] if auth is not None and auth.username else None


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def handle_api_error(err: ApiError):
        if err.status >= 500:
            log.error("request %s %s %s failed: %s", g.get("request_id"), request.method,
                      request.path, err.message)
        return _error_response(err)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        response = _error_response(_from_http_exception(exc))
        valid_methods = getattr(exc, "valid_methods", None)  # (a MethodNotAllowed's)
        if exc.code == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        translated = system_error(exc)
        if translated is not None:
            log.error("request %s %s %s: %s", g.get("request_id"), request.method, request.path, exc)
            return _error_response(translated)
        log.exception("request %s %s %s raised", g.get("request_id"), request.method, request.path)
        return _error_response(InternalError(
            f"Internal error (request id {g.get('request_id', 'unknown')}); see the server log"))


def init_api(app: Flask) -> None:
    app.config.update(
        API_TITLE="vsnap",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="/api/docs/static/",
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}}},
            "security": [{"basicAuth": []}],
            "info": {"description": "vsnap storage appliance API (vsnap-api-1.0)"},
        },
    )
    api = Api(app)
    for blp in BLUEPRINTS:
        api.register_blueprint(blp)

    @app.url_value_preprocessor
    def canonical_path_ids(endpoint, values):
        """A path's IDs in the form the Id field gives those of a query or a body ("03" is 3,
        hex in lower case), so /api/pool/03 and ?id=03 find the same pool. An ID that is no
        ID stays as it is: the lookup answers 404."""
        for key, value in (values or {}).items():
            if key.endswith("_id") and isinstance(value, str):
                try:
                    values[key] = Id(hex32=len(value.strip()) == 32).deserialize(value)
                except ma.ValidationError:
                    pass

    @app.route("/api/docs/static/<path:filename>")
    def swagger_static(filename):
        # Served locally: appliances usually have no internet access for a CDN.
        import swagger_ui_bundle
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    @app.before_request
    def assign_request_id():
        # A client's own id is kept when it is a plain token (it reaches every log line).
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        g.request_token = request_id_var.set(g.request_id)
        g.started = time.monotonic()
        # Reads are kept between requests (services/catalog.py); a client that just changed
        # ZFS by hand asks for a fresh one.
        cache_control = request.headers.get("Cache-Control", "") + request.headers.get("Pragma", "")
        g.fresh_token = fresh_reads.set("no-cache" in cache_control.lower())

    @app.after_request
    def account_for_request(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        seconds = time.monotonic() - g.get("started", time.monotonic())
        endpoint = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        user = g.get("user") or _claimed_user()
        metrics.record_request(request.method, endpoint, response.status_code, seconds)
        log.info("%s %s -> %s in %.3fs (%s)", request.method, request.path, response.status_code, seconds,
                 user or "-", extra={"method": request.method, "path": request.path,
                                     "status": response.status_code, "duration": round(seconds, 3),
                                     "user": user})
        if request.method in CHANGES:
            message = None
            if response.status_code >= 400 and response.is_json:
                message = ((response.get_json(silent=True) or {}).get("error") or {}).get("message")
            current_app.extensions["vsnap"].audit.record(
                time=time.time(), user=user, address=request.remote_addr, method=request.method,
                path=request.path, detail=_body_for_audit(), status=response.status_code,
                message=message, request_id=g.get("request_id"))
        return response

    @app.teardown_request
    def forget_request_id(_exc):
        token = g.pop("request_token", None)
        if token is not None:
            request_id_var.reset(token)
        fresh_token = g.pop("fresh_token", None)
        if fresh_token is not None:
            fresh_reads.reset(fresh_token)

    install_auth(app)

    @app.before_request
    def refuse_oversized_body():
        # On every route, after the login: also on those that never read a body (DELETE),
        # which would otherwise leave gunicorn to drain whatever a client sends.
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if limit is None:
            return
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLargeError("Request body is too large")
        if request.content_length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            # werkzeug ends a streamed body at the limit without an error, and the first
            # 1 MiB of a longer one was parsed: a body that reaches the limit is refused.
            if len(request.get_data(cache=True)) >= limit:
                raise PayloadTooLargeError("Request body is too large")

    install_error_handlers(app)
