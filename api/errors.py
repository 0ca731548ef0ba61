"""One place that turns every error into the contract's JSON error format.

Covers the project's :class:`~shared.errors.ServiceError` tree, werkzeug's
HTTP errors raised by Flask itself (404, 405 with its ``Allow`` header, 413),
and anything unexpected, which becomes a 500 with a request id and no
traceback in the body (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import uuid

import marshmallow as ma
from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from shared.errors import ServiceError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    503: "dependency_unavailable",
}


class ErrorDetailSchema(ma.Schema):
    """The inside of an error body."""

    code = ma.fields.String(required=True, metadata={"description": "Machine-readable code"})
    message = ma.fields.String(required=True, metadata={"description": "A human sentence"})
    details = ma.fields.Dict(required=True, metadata={"description": "Structured context"})


class ErrorBodySchema(ma.Schema):
    """Every error response: ``{"error": {"code", "message", "details"}}``."""

    error = ma.fields.Nested(ErrorDetailSchema, required=True)


def error_response(
    status: int, code: str, message: str, details: dict[str, object] | None = None
) -> Response:
    """A response in the contract's error format."""
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def _service_error(exc: ServiceError) -> Response:
    if exc.status >= 500:
        log.warning("service error %s: %s", exc.code, exc.message)
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    if exc.status == 503:
        response.headers["Retry-After"] = str(getattr(exc, "retry_after", 5))
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    message = exc.description or exc.name
    if status == 404:
        message = "No such endpoint. See /openapi.json for the API."
    elif status == 405:
        message = "This method is not allowed on this endpoint."
    elif status == 413:
        message = "The request body is larger than this endpoint accepts."
    response = error_response(status, code, message)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    if isinstance(exc, ServiceError):
        return _service_error(exc)
    request_id = getattr(g, "request_id", None) or uuid.uuid4().hex
    log.exception("unhandled error (request %s)", request_id)
    return error_response(
        500,
        "internal_error",
        "The server hit an unexpected error; it has been logged. "
        "Quote the request id when reporting it.",
        {"request_id": request_id},
    )


def init_app(app: Flask) -> None:
    """Register the handlers; call after flask-smorest so these take precedence."""
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
