"""Errors raised while reading Label Studio data and task media.

Each carries an HTTP-meaningful `status`, a one-line `reason` (str(error)) and a short machine `kind` from a
closed set (what a metric or a batch summary counts), so the server can answer `{"error": reason}` with that
status unchanged, and a batch job can log and count the reason. The ones that describe a bad value (BadRequest,
Unprocessable and its subclasses) are also ValueErrors, so code outside the server catches them the usual way.

Statuses: 400 the request is malformed, 403 a media URL the policy refuses (private address, outside the
allow-list or LOCAL_FILES_ROOT), 413 over a size limit, 422 well-formed but unusable (bad RLE, media missing
upstream (HTTP 404/410) or not decodable), 502 the media host failed (unreachable, 5xx, refused our token),
504 it timed out.
"""
from __future__ import annotations

# The closed set of `kind`s (metrics label values); anything else is counted as "other".
KINDS = ("bad_request", "bad_region", "bad_label_config", "unprocessable", "empty_mask", "media_refused",
         "media_not_found", "media_unreachable", "media_timeout", "media_too_large", "media_undecodable",
         "model_error", "overloaded", "model_unavailable", "other")


class StatusError(Exception):
    """Base class: `status` is the HTTP status, str(self) the one-line reason, `kind` the short machine reason."""

    status = 500
    kind = "other"

    def __init__(self, reason: str, status: int | None = None, kind: str | None = None) -> None:
        super().__init__(" ".join(str(reason).split()))  # one line, always
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind

    @property
    def reason(self) -> str:
        return str(self)


class BadRequest(StatusError, ValueError):
    """Malformed input: a body, task or region of the wrong shape."""

    status = 400
    kind = "bad_request"


class Unprocessable(StatusError, ValueError):
    """Well-formed but unusable: bad RLE, mask size mismatch, label config without what we need."""

    status = 422
    kind = "unprocessable"


class RLEError(Unprocessable):
    """The brush RLE is malformed or does not match the expected image size."""

    kind = "bad_region"


class EmptyMask(Unprocessable):
    """A region (or the prompts) covers no pixel: nothing to describe. A normal outcome, not a crash: the model
    (dam_model.focal) refuses empty masks, so the mask is checked before the model sees it."""

    kind = "empty_mask"


class ModelError(Unprocessable):
    """The model or the segmenter rejected this input (a ValueError on the model path): the region is unusable."""

    kind = "model_error"


class LabelConfigError(Unprocessable):
    """The label config is not XML, or lacks a tag the backend needs (the message names it)."""

    kind = "bad_label_config"


class PayloadTooLarge(StatusError):
    """Media over the byte or pixel limit."""

    status = 413
    kind = "media_too_large"


class UpstreamError(StatusError):
    """The media host failed: unreachable, an HTTP 5xx, or it refused our token."""

    status = 502
    kind = "media_unreachable"


class UpstreamTimeout(StatusError):
    status = 504
    kind = "media_timeout"


class MediaError(StatusError):
    """Media could not be used: a malformed URL (400); subclasses below for the other cases."""

    status = 400
    kind = "bad_request"


class MediaRefused(MediaError):
    """The media URL is refused by policy (SSRF rules: a private address, a host outside MEDIA_ALLOWED_HOSTS, a
    path outside LOCAL_FILES_ROOT): the client asked for something it may not have, no upstream failed."""

    status = 403
    kind = "media_refused"


class MediaNotFound(MediaError):
    """The media host answered that the file does not exist (HTTP 404/410), or a local file is missing."""

    status = 422
    kind = "media_not_found"


class MediaUndecodable(MediaError, ValueError):
    """The bytes arrived but are not a decodable image or video (truncated, unknown format or codec)."""

    status = 422
    kind = "media_undecodable"
