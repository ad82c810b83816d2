"""Errors a client can branch on: each maps to an HTTP status and the spec's error object."""
from __future__ import annotations


class ApiError(Exception):
    status = 500
    type = "InternalError"

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type}}


class ValidationError(ApiError):
    status = 400
    type = "ValidationError"


class InvalidCandidateError(ApiError):
    status = 400
    type = "InvalidCandidateError"


class AuthenticationError(ApiError):
    status = 401
    type = "AuthenticationError"


class PermissionDeniedError(ApiError):
    status = 403
    type = "PermissionDeniedError"


class NotFoundError(ApiError):
    status = 404
    type = "NotFoundError"


class MethodNotAllowedError(ApiError):
    status = 405
    type = "MethodNotAllowedError"


class ConflictError(ApiError):
    status = 409
    type = "ConflictError"


class PayloadTooLargeError(ApiError):
    status = 413
    type = "PayloadTooLargeError"


class UnsupportedMediaTypeError(ApiError):
    status = 415
    type = "UnsupportedMediaTypeError"


class TooManyRequestsError(ApiError):
    status = 429
    type = "TooManyRequestsError"


class InternalError(ApiError):
    status = 500
    type = "InternalError"


class ServiceUnavailableError(ApiError):
    """A system command timed out or a storage service is down: the request failed, the server did not."""

    status = 503
    type = "ServiceUnavailableError"
