"""Errors the routes turn into `{"error": "<one-line reason>"}` with a meaningful HTTP status.

Every such error is an `ls_io.errors.StatusError` (app.py's handler catches that base). The format and media
errors live in ls_io and are re-exported here; this module adds only what is specific to serving.
"""
from __future__ import annotations

from ls_io.errors import BadRequest, MediaError, PayloadTooLarge, StatusError, Unprocessable, UpstreamError, UpstreamTimeout

__all__ = ["BackendError", "BadRequest", "MediaError", "ModelUnavailable", "PayloadTooLarge", "StatusError",
           "Unauthorized", "Unprocessable", "UpstreamError", "UpstreamTimeout"]


class BackendError(StatusError):
    """A serving failure with no more specific class (500 unless a status is given)."""


class Unauthorized(BackendError):
    status = 401


class ModelUnavailable(BackendError):
    """No model could be loaded."""

    status = 503
