"""Errors the routes turn into `{"error": "<one-line reason>"}` with a meaningful HTTP status.

Every such error is an `ls_io.errors.StatusError` (app.py's handler catches that base). The format, media and
region errors (EmptyMask, ModelError included) live in ls_io and are re-exported here; this module adds only what
is specific to serving.
"""
from __future__ import annotations

from ls_io.errors import (BadRequest, EmptyMask, MediaError, MediaNotFound, MediaRefused, MediaUndecodable, ModelError,
                          PayloadTooLarge, StatusError, Unprocessable, UpstreamError, UpstreamTimeout)

__all__ = ["BackendError", "BadRequest", "EmptyMask", "MediaError", "MediaNotFound", "MediaRefused",
           "MediaUndecodable", "ModelError", "ModelUnavailable", "NotFound", "Overloaded", "PayloadTooLarge",
           "StatusError", "Unauthorized", "Unprocessable", "UpstreamError", "UpstreamTimeout"]


class BackendError(StatusError):
    """A serving failure with no more specific class (500 unless a status is given)."""


class Unauthorized(BackendError):
    status = 401


class NotFound(BackendError):
    """A model version (or other named thing) the request asks for is not here."""

    status = 404
    kind = "bad_request"


class ModelUnavailable(BackendError):
    """No model could be loaded."""

    status = 503
    kind = "model_unavailable"
    retry_after = 30


class Overloaded(BackendError):
    """Too many batch requests at once: come back in `retry_after` seconds."""

    status = 503
    kind = "overloaded"

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
