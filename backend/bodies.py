"""Request bodies in, error replies out: JSON parsed with a nesting limit, the reason carried in the status line.

Why the status line: Label Studio 1.23 (ml/api_connector.py `_request`) turns a non-2xx reply into
`str(requests.HTTPError)` = "<code> Client Error: <reason phrase> for url: <url>" and that string is all the
editor gets (ml/models.py `interactive_annotating` -> {"errors": [...]}); the JSON body is dropped. So every
error reply puts its one-line reason into the reason phrase as well as into the body.
"""
from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

import numpy as np

from .errors import BadRequest

MAX_PHRASE_CHARS = 150
# A JSON string literal (escapes included): removed before counting brackets, so "[[[" in a caption is no depth.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, in one pass over its brackets (no recursion, no parse)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def parse_json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object; BadRequest when it is not JSON, not an object, or nested over `max_depth`
    (Python's parser recurses: a 5,000-deep body would otherwise end in RecursionError)."""
    if not raw.strip():
        raise BadRequest("request body is empty: send a JSON object")
    depth = json_depth(raw)
    if depth > max_depth:
        raise BadRequest(f"request body nests {depth} levels deep, over the limit of {max_depth}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"request body is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def status_line(status: int, reason: str) -> str:
    """"<status> <reason>" for the HTTP status line: printable ASCII only (RFC 9112 reason-phrase; gunicorn
    rejects anything else), one line, at most MAX_PHRASE_CHARS; the standard phrase when nothing is left."""
    phrase = reason.encode("ascii", "replace").decode("ascii")
    phrase = " ".join("".join(c if " " <= c <= "~" else " " for c in phrase).split())
    if len(phrase) > MAX_PHRASE_CHARS:
        phrase = phrase[: MAX_PHRASE_CHARS - 3].rstrip() + "..."
    if not phrase:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
    return f"{status} {phrase}"
