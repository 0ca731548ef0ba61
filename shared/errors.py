"""The project's error hierarchy.

One root, :class:`ServiceError`. Each subclass carries the HTTP status and the
machine code it maps to, so the mapping lives in exactly one place. Permanent
errors are never retried by workers; :class:`TransientError` subclasses are.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """Render in the contract's error format."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ServiceError):
    """The request is malformed (400)."""

    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    """No key, or a key that does not exist (401)."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """The key lacks the scope the endpoint needs (403)."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    """An unknown id, or one that belongs to another tenant (404)."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request clashes with the current state, e.g. a model already training (409)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    """A body, file or row count over the configured limits (413)."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """The request's content type is not one the endpoint takes (415)."""

    status = 415
    code = "unsupported_media_type"


class ValidationFailed(ServiceError):
    """Well-formed but invalid input (422)."""

    status = 422
    code = "validation_failed"


class RateLimited(ServiceError):
    """Too many requests for the tenant (429)."""

    status = 429
    code = "rate_limited"


class TransientError(ServiceError):
    """A failure worth retrying: a dependency is down or slow."""

    transient = True


class DependencyUnavailable(TransientError):
    """Redis, storage or the workers cannot be reached (503)."""

    status = 503
    code = "dependency_unavailable"


class TrainingFailed(ServiceError):
    """A training run cannot complete with this data or these settings (permanent)."""

    status = 422
    code = "training_failed"


class ConfigError(ServiceError):
    """A setting read from the environment is invalid; start-up stops."""

    code = "config_error"


class QuotaExceeded(ServiceError):
    """A per-tenant quota would be exceeded; nothing was stored or started (429)."""

    status = 429
    code = "quota_exceeded"


class TryLater(TransientError):
    """The request needs more work than the API does inline; try again later (503)."""

    status = 503
    code = "try_later"
    #: Seconds the client is told to wait (the Retry-After header).
    retry_after = 30
