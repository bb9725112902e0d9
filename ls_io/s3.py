"""The one S3 client factory, and the one redaction of secrets from log lines and error messages.

Credentials come from the arguments when given, else boto3's chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...);
they never reach a log line: `redact` replaces the values of the secret environment variables by '***', and
`RedactSecrets` does it to every record of a logger. boto3 is imported inside `make_s3_client` on purpose: it is
an optional, heavy dependency that only S3 work needs.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable

# Environment variables whose values must never reach a log line or an error message.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "LABEL_STUDIO_API_KEY")
MIN_SECRET_LENGTH = 8  # shorter values would mangle ordinary words; real keys are long
READ_ONLY_OPERATIONS = frozenset({"ListObjectsV2", "GetObject"})


def make_s3_client(endpoint_url: str | None = None, *, region: str | None = None, access_key: str | None = None,
                   secret_key: str | None = None, path_style: bool = False, read_only: bool = False) -> Any:
    """A boto3 S3 client with short connect timeouts and bounded retries (a dead endpoint costs seconds, not
    minutes). endpoint_url: an S3-compatible server (MinIO, moto), None for AWS; region/access_key/secret_key:
    None lets boto3's chain decide; path_style: bucket in the path (what most S3-compatible servers expect);
    read_only: every operation but ListObjectsV2 and GetObject raises PermissionError before it is sent."""
    import boto3  # deferred: optional, heavy
    from botocore.config import Config  # deferred with boto3

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"} if path_style else None)
    client = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                          aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None, config=config)
    if read_only:
        client.meta.events.register("before-call.s3", _refuse_writes)
    return client


def _refuse_writes(model: Any = None, **_: Any) -> None:
    name = getattr(model, "name", "?")
    if name not in READ_ONLY_OPERATIONS:
        raise PermissionError(f"this S3 client is read-only: refused S3 operation {name}")


def secret_values(extra_secrets: Iterable[str] = ()) -> list[str]:
    """The values to hide: the secret environment variables' (read now) and `extra_secrets`, longest first."""
    values = [os.environ.get(name, "") for name in SECRET_ENV_VARS] + list(extra_secrets)
    return sorted({v for v in values if v and len(v) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret value replaced by '***' (`secrets` default: secret_values())."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, "***")
    return text


def describe_error(exc: BaseException) -> str:
    """One safe line for an S3/boto/OS error: its type and message, secrets redacted."""
    return redact(f"{type(exc).__name__}: {exc}".splitlines()[0])


class RedactSecrets(logging.Filter):
    """Redacts every record passing through (defence in depth); the secret values are read when it is made."""

    def __init__(self, extra_secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = secret_values(extra_secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = redact(message, self.secrets)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True
