"""HTTP Basic auth for Label Studio's calls, and a query-token check for its webhook (which has no auth header)."""
from __future__ import annotations

import base64
import binascii
import hmac

from .settings import Settings


def _same(a: str, b: str) -> bool:
    """Constant-time comparison of two strings (as UTF-8 bytes)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def check_basic(header: str | None, settings: Settings) -> bool:
    """True when basic auth is off, or `header` ("Basic <b64 user:pass>") carries the configured pair."""
    if not settings.basic_auth_enabled:
        return True
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Evaluate both comparisons always, so timing does not reveal which one failed.
    ok_user = _same(user, settings.basic_auth_user)
    ok_pass = _same(password, settings.basic_auth_pass)
    return ok_user and ok_pass


def check_webhook(token: str | None, header: str | None, settings: Settings) -> bool:
    """Webhook auth: WEBHOOK_SECRET as ?token=...; without a secret, fall back to basic auth."""
    if settings.webhook_secret:
        return token is not None and _same(token, settings.webhook_secret)
    return check_basic(header, settings)
