"""Fetch task media (images, videos) the way Label Studio serves it, safely.

URL kinds:
- "/data/upload/...", "/data/local-files/?d=..." and anything on LABEL_STUDIO_URL's host: fetched from Label Studio
  with LABEL_STUDIO_API_KEY ("Token <legacy>" or, for a personal access token, "Bearer <access>" obtained at
  /api/token/refresh/ and renewed before its 5-minute expiry).
- s3://, gs://, azure-blob://, ...: presigned by Label Studio at /tasks/<id>/presign/?fileuri=<base64url>; its
  redirect is followed WITHOUT the token.
- plain http(s): no token; the host must pass the allow-list (MEDIA_ALLOWED_HOSTS) and resolve only to public
  addresses unless MEDIA_ALLOW_PRIVATE (or the host is named in the allow-list).
- local paths and file://: only under LOCAL_FILES_ROOT.

The token only ever goes to the Label Studio host: redirects are followed by hand and lose it when they leave.
Downloads are capped in bytes, images in pixels; results are cached on disk under sha256(url).
Tokens never appear in logs or error messages.

Configuration: `MediaConfig` (`MediaConfig.from_env()` reads the same environment variables as the server), or any
object with the same attributes (the server passes its Settings).
"""
from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import logging
import os
import socket
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import quote, urljoin, urlsplit

import numpy as np
import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import (MediaError, MediaNotFound, MediaRefused, MediaUndecodable, PayloadTooLarge, StatusError,
                     UpstreamError, UpstreamTimeout)

log = logging.getLogger(__name__)

CLOUD_SCHEMES = {"s3", "gs", "gcs", "azure-blob", "azure", "az"}
_MAX_REDIRECTS = 5
_REFRESH_MARGIN_S = 30.0


class MediaSettings(Protocol):
    """What the fetcher reads from its configuration: MediaConfig below, or the server's Settings (same names)."""

    @property
    def label_studio_url(self) -> str: ...
    @property
    def label_studio_api_key(self) -> str: ...
    @property
    def media_cache_dir(self) -> str: ...
    @property
    def allowed_hosts(self) -> set[str]: ...
    @property
    def media_allow_private(self) -> bool: ...
    @property
    def local_files_root(self) -> str: ...
    @property
    def media_max_bytes(self) -> int: ...
    @property
    def media_max_pixels(self) -> int: ...
    @property
    def media_timeout(self) -> float: ...
    @property
    def image_cache_items(self) -> int: ...


@dataclass(frozen=True)
class MediaConfig:
    """Media rules for code outside the server (the loop). Field name == environment variable name, upper-cased,
    with the server's defaults (backend/settings.py documents each variable and takes its defaults from here)."""

    label_studio_url: str = ""
    label_studio_api_key: str = ""
    media_cache_dir: str = ".cache/media"
    media_allowed_hosts: str = ""
    media_allow_private: bool = False
    local_files_root: str = ""
    media_max_bytes: int = 64 * 1024 * 1024
    video_max_bytes: int = 1024 * 1024 * 1024
    media_max_pixels: int = 64_000_000
    media_timeout: float = 20.0
    image_cache_items: int = 8

    @property
    def allowed_hosts(self) -> set[str]:
        return {h.strip().lower() for h in self.media_allowed_hosts.split(",") if h.strip()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "MediaConfig":
        """Read the variables from os.environ (or `environ`); `overrides` win. A malformed value names its variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None:
                continue
            try:
                values[f.name] = parse_env_value(f.type, raw)
            except ValueError as exc:
                raise ValueError(f"{f.name.upper()}={raw!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)


def parse_env_value(kind: Any, raw: str) -> Any:
    """An environment variable's text as its dataclass field's type (bool, int, float, else str); ValueError says
    why (the caller names the variable). Also the bulk job's configuration reader (dam_preannotate.config)."""
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if kind == "bool":
        low = raw.strip().lower()
        if low not in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
            raise ValueError("not a boolean (true/false)")
        return low in {"1", "true", "yes", "on"}
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def _jwt_claims(token: str) -> dict | None:
    """Claims of a JWT without verifying it (we only need token_type and exp); None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _host_of(url: str) -> str:
    """host[:port] of a URL for messages: never the userinfo, path or query (they can hold credentials)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    return f"{host}:{port}" if port else host


def is_public_address(addr: str) -> bool:
    """False for private, loopback, link-local, multicast, reserved and unspecified addresses."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


class LabelStudioAuth:
    """Authorization header for Label Studio: legacy token or personal access token (JWT refresh flow)."""

    def __init__(self, base_url: str, api_key: str, session, timeout: float) -> None:
        self.base_url, self._key, self._session, self._timeout = base_url.rstrip("/"), api_key, session, timeout
        claims = _jwt_claims(api_key) if api_key else None
        self.is_pat = bool(claims and claims.get("token_type") == "refresh")
        self._access: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        if not self._key:
            return {}
        if not self.is_pat:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if self._access is None or time.time() > self._expires_at - _REFRESH_MARGIN_S:
                self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def _refresh(self) -> None:
        try:
            resp = self._session.post(
                f"{self.base_url}/api/token/refresh/", json={"refresh": self._key}, timeout=self._timeout, allow_redirects=False
            )
        except requests.Timeout:
            raise UpstreamTimeout("Label Studio token refresh timed out") from None
        except requests.RequestException as exc:
            raise UpstreamError(f"Label Studio token refresh failed: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise UpstreamError(f"Label Studio refused the personal access token (HTTP {resp.status_code})")
        access = resp.json().get("access")
        if not access:
            raise UpstreamError("Label Studio token refresh answered without an access token")
        claims = _jwt_claims(access) or {}
        self._access = access
        self._expires_at = float(claims.get("exp", time.time() + 300))


class MediaFetcher:
    """Downloads and decodes task media. Thread-safe; one per process is enough."""

    def __init__(self, settings: MediaSettings, resolver: Callable[[str], list[str]] | None = None) -> None:
        self.settings = settings
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies or .netrc credentials sneaking in
        self.ls_url = settings.label_studio_url.rstrip("/")
        self._ls_host = urlsplit(self.ls_url).netloc.lower() if self.ls_url else ""
        self.auth = LabelStudioAuth(self.ls_url, settings.label_studio_api_key, self.session, settings.media_timeout)
        self._resolve = resolver or self._default_resolve
        self.cache_dir = Path(settings.media_cache_dir) if settings.media_cache_dir else None
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._images_lock = threading.Lock()

    def adopt_label_studio(self, url: str, token: str) -> bool:
        """Use /setup's hostname and access_token when LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not configured
        (that token is the project creator's legacy token: refused when legacy tokens are off, so prefer the env)."""
        if self.ls_url or not url or not url.startswith(("http://", "https://")):
            return False
        self.ls_url = url.rstrip("/")
        self._ls_host = urlsplit(self.ls_url).netloc.lower()
        self.auth = LabelStudioAuth(self.ls_url, token or "", self.session, self.settings.media_timeout)
        log.info("media: using Label Studio at %s from /setup", self.ls_url)
        return True

    # ---------- URL routing ----------
    @staticmethod
    def _default_resolve(host: str) -> list[str]:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})

    def _is_ls(self, url: str) -> bool:
        return bool(self._ls_host) and urlsplit(url).netloc.lower() == self._ls_host

    def _check_public_url(self, url: str) -> None:
        """SSRF rules for a URL that is not Label Studio's: allow-list, then every resolved address. A refusal is
        MediaRefused (403: the request asked for what it may not have), not an upstream failure."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"}:
            raise MediaError(f"unsupported URL scheme {parts.scheme!r}")
        host = (parts.hostname or "").lower()
        if not host:
            raise MediaError("media URL has no host")
        allowed = self.settings.allowed_hosts
        named = host in allowed
        if allowed and "*" not in allowed and not named:
            raise MediaRefused(f"media URL refused: host {host} is not in MEDIA_ALLOWED_HOSTS")
        if named or self.settings.media_allow_private:
            return
        try:
            addrs = self._resolve(host)
        except OSError:
            raise UpstreamError(f"media host {host} does not resolve") from None
        if not addrs:
            raise UpstreamError(f"media host {host} does not resolve")
        for addr in addrs:
            if not is_public_address(addr):
                raise MediaRefused(f"media URL refused: private address ({host} resolves to {addr})")

    def resolve_url(self, url: str, task_id: int | None = None) -> tuple[str, str]:
        """(kind, absolute URL or path): kind is 'ls', 'cloud', 'http' or 'local'."""
        if not isinstance(url, str) or not url.strip():
            raise MediaError("task has no media URL")
        url = url.strip()
        scheme = urlsplit(url).scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if not self.ls_url:
                raise MediaError(f"{scheme}:// media needs LABEL_STUDIO_URL to presign it")
            if task_id is None:
                raise MediaError(f"{scheme}:// media needs the task id to presign it")
            fileuri = base64.urlsafe_b64encode(url.encode("utf-8")).decode("ascii")
            return "cloud", f"{self.ls_url}/tasks/{int(task_id)}/presign/?fileuri={quote(fileuri)}"
        if url.startswith("/data/") or url.startswith("/tasks/") or (url.startswith("/") and not os.path.exists(url) and self.ls_url):
            if not self.ls_url:
                raise MediaError(f"relative media URL {url.split('?')[0]} needs LABEL_STUDIO_URL")
            return "ls", urljoin(self.ls_url + "/", url.lstrip("/"))
        if scheme in {"http", "https"}:
            return ("ls" if self._is_ls(url) else "http"), url
        if scheme == "file" or scheme == "" :
            return "local", url[7:] if scheme == "file" else url
        raise MediaError(f"unsupported media URL scheme {scheme!r}")

    # ---------- download ----------
    def _read_local(self, path: str, max_bytes: int, what: str = "media") -> bytes:
        root = self.settings.local_files_root
        if not root:
            raise MediaRefused("media URL refused: local paths are disabled (set LOCAL_FILES_ROOT)")
        try:
            real_root = Path(root).resolve()
            real = (real_root / path).resolve() if not os.path.isabs(path) else Path(path).resolve()
            if not real.is_relative_to(real_root):
                raise MediaRefused("media URL refused: local media path is outside LOCAL_FILES_ROOT")
            if not real.is_file():
                raise MediaNotFound(f"{what} could not be fetched: local file {real.name[:80]} not found")
            if real.stat().st_size > max_bytes:
                raise PayloadTooLarge(f"{what} is {real.stat().st_size} bytes, over the {max_bytes} byte limit")
            return real.read_bytes()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a folder: the path is unusable
            raise MediaError(f"local media path is not usable: {type(exc).__name__}") from None

    def _get(self, url: str, with_token: bool, max_bytes: int, what: str = "media") -> bytes:
        """GET following redirects by hand: the token is dropped as soon as a hop leaves Label Studio's host.
        Errors name `what` ("image", "video") and the host only: never a path or query (presigned URLs carry keys)."""
        for _ in range(_MAX_REDIRECTS + 1):
            token_here = with_token and self._is_ls(url)
            if not token_here and not self._is_ls(url):
                self._check_public_url(url)
            headers = self.auth.header() if token_here else {}
            where = _host_of(url)
            try:
                resp = self.session.get(url, headers=headers, timeout=self.settings.media_timeout, stream=True, allow_redirects=False)
            except requests.Timeout:
                raise UpstreamTimeout(f"{what} could not be fetched: timed out ({where})") from None
            except requests.RequestException as exc:
                raise UpstreamError(f"{what} could not be fetched: {where} unreachable ({type(exc).__name__})") from None
            with resp:
                if resp.status_code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise UpstreamError(f"{what} could not be fetched: redirect without a Location ({where})")
                    url = urljoin(url, location)
                    continue
                if resp.status_code in (404, 410):  # the host works; the file is not there: the task's problem
                    raise MediaNotFound(f"{what} could not be fetched: HTTP {resp.status_code} ({where})")
                if resp.status_code != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if resp.status_code in (401, 403) and token_here else ""
                    raise UpstreamError(f"{what} could not be fetched: HTTP {resp.status_code} ({where}){hint}")
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise PayloadTooLarge(f"{what} is {declared} bytes, over the {max_bytes} byte limit")
                buf = bytearray()
                try:
                    for chunk in resp.iter_content(1 << 16):
                        buf += chunk
                        if len(buf) > max_bytes:
                            raise PayloadTooLarge(f"{what} is over the {max_bytes} byte limit")
                except requests.Timeout:
                    raise UpstreamTimeout(f"{what} could not be fetched: timed out ({where})") from None
                except requests.RequestException as exc:
                    raise UpstreamError(f"{what} could not be fetched: download failed ({type(exc).__name__})") from None
                return bytes(buf)
        raise UpstreamError(f"{what} could not be fetched: too many redirects")

    def _cache_path(self, url: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / hashlib.sha256(url.encode("utf-8")).hexdigest()

    def fetch_bytes(self, url: str, task_id: int | None = None, max_bytes: int | None = None,
                    what: str = "media") -> bytes:
        """The raw bytes of a task's media (cached on disk by URL hash); errors name `what` ("image", "video")."""
        max_bytes = max_bytes or self.settings.media_max_bytes
        kind, where = self.resolve_url(url, task_id)
        if kind == "local":
            return self._read_local(where, max_bytes, what)
        cache = self._cache_path(url if kind == "cloud" else where)
        if cache is not None and cache.is_file():
            if cache.stat().st_size <= max_bytes:
                return cache.read_bytes()
        data = self._get(where, with_token=kind in {"ls", "cloud"}, max_bytes=max_bytes, what=what)
        if cache is not None:
            self._write_cache(cache, data)
        return data

    def fetch_path(self, url: str, task_id: int | None = None, max_bytes: int | None = None,
                   what: str = "media") -> Path:
        """A local file holding the media (for video decoders that want a path)."""
        kind, where = self.resolve_url(url, task_id)
        if kind == "local":
            self._read_local(where, 1 << 62, what)  # the checks only
            root = Path(self.settings.local_files_root).resolve()
            return (root / where).resolve() if not os.path.isabs(where) else Path(where).resolve()
        data = self.fetch_bytes(url, task_id, max_bytes, what)
        cache = self._cache_path(url if kind == "cloud" else where)
        if cache is not None and cache.is_file():
            return cache
        fd, tmp = tempfile.mkstemp(prefix="media-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return Path(tmp)

    @staticmethod
    def _write_cache(path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:  # a cache failure never fails the request
            log.warning("media cache write failed: %s", exc)

    # ---------- decode ----------
    def load_image(self, url: str, task_id: int | None = None) -> np.ndarray:
        """The task image as HxWx3 uint8 RGB, EXIF orientation applied (read-only array, shared by an LRU)."""
        key = f"{task_id}|{url}" if urlsplit(url).scheme.lower() in CLOUD_SCHEMES else url
        with self._images_lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        image = decode_image(self.fetch_bytes(url, task_id, what="image"), self.settings.media_max_pixels)
        image.setflags(write=False)
        if self.settings.image_cache_items > 0:
            with self._images_lock:
                self._images[key] = image
                while len(self._images) > self.settings.image_cache_items:
                    self._images.popitem(last=False)
        return image


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes to HxWx3 uint8 RGB as the editor shows them: EXIF orientation applied, the first frame
    of an animation, 16-bit and float samples scaled to 8 bits, transparency composited over white, CMYK and
    palette converted. PayloadTooLarge over `max_pixels`; MediaUndecodable for anything PIL cannot read
    (truncated, unknown format, broken chunks: PIL raises many exception types on hostile bytes)."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's decompression-bomb guard: warns above, raises above 2x
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise PayloadTooLarge(f"image is {img.width}x{img.height}, over the {max_pixels} pixel limit")
                img.seek(0)  # animated GIF/PNG, multi-page TIFF: the first frame, as a browser shows before playing
                img.load()
                return _to_rgb8(_upright(img))
    except StatusError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"image is over the {max_pixels} pixel limit") from None
    except UnidentifiedImageError:
        raise MediaUndecodable("image could not be decoded: not an image format PIL reads") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes raise OSError, SyntaxError, ValueError, struct.error...
        detail = " ".join(str(exc).split())[:120]
        raise MediaUndecodable(f"image could not be decoded: {type(exc).__name__}: {detail}") from None


def _upright(img: Image.Image) -> Image.Image:
    """The image turned by its EXIF orientation (browsers apply it, so the editor's masks are upright); a broken
    EXIF block is ignored, as browsers ignore it."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - any EXIF parsing error: show it as stored
        log.debug("EXIF orientation unreadable, image used as stored: %s", exc)
        return img


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 of any PIL mode."""
    if img.mode in {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}:  # 16-bit / 32-bit / float grey
        grey = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and grey.max(initial=0) <= 1.0 else 65535.0 if grey.max(initial=0) <= 65535 else grey.max()
        grey = np.clip(np.round(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
