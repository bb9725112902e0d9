"""Errors the routes turn into `{"error": "<one-line reason>"}` with a meaningful HTTP status."""
from __future__ import annotations


class BackendError(Exception):
    """Base class: `status` is the HTTP status, str(self) the one-line reason."""

    status = 500

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(" ".join(str(reason).split()))  # one line, always
        if status is not None:
            self.status = status


class BadRequest(BackendError):
    """Malformed JSON or a body of the wrong shape."""

    status = 400


class Unauthorized(BackendError):
    status = 401


class Unprocessable(BackendError):
    """Well-formed but unusable: bad RLE, mask size mismatch, label config without what we need."""

    status = 422


class PayloadTooLarge(BackendError):
    """Media over the byte or pixel limit."""

    status = 413


class UpstreamError(BackendError):
    """Media unreachable, refused (SSRF rules) or answered with an error."""

    status = 502


class UpstreamTimeout(BackendError):
    status = 504


class ModelUnavailable(BackendError):
    """No model could be loaded."""

    status = 503
