"""Errors raised while reading Label Studio data and task media.

Each carries an HTTP-meaningful `status` and a one-line `reason` (str(error)), so the server can answer
`{"error": reason}` with that status unchanged, and a batch job can log the reason. The ones that describe a bad
value (BadRequest, Unprocessable and its subclasses) are also ValueErrors, so code outside the server catches them
the usual way.
"""
from __future__ import annotations


class StatusError(Exception):
    """Base class: `status` is the HTTP status, str(self) the one-line reason."""

    status = 500

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(" ".join(str(reason).split()))  # one line, always
        if status is not None:
            self.status = status

    @property
    def reason(self) -> str:
        return str(self)


class BadRequest(StatusError, ValueError):
    """Malformed input: a body, task or region of the wrong shape."""

    status = 400


class Unprocessable(StatusError, ValueError):
    """Well-formed but unusable: bad RLE, mask size mismatch, label config without what we need."""

    status = 422


class RLEError(Unprocessable):
    """The brush RLE is malformed or does not match the expected image size."""


class LabelConfigError(Unprocessable):
    """The label config is not XML, or lacks a tag the backend needs (the message names it)."""


class PayloadTooLarge(StatusError):
    """Media over the byte or pixel limit."""

    status = 413


class UpstreamError(StatusError):
    """Media unreachable, refused (SSRF rules) or answered with an error."""

    status = 502


class UpstreamTimeout(StatusError):
    status = 504


class MediaError(StatusError):
    """Media could not be used: a bad or disallowed URL (400), or bytes that do not decode (422)."""

    status = 400
