"""Test doubles for task media, shared by tests/backend and tests/ls_io (tests/ is on sys.path): images as PNG/JPEG
bytes, a JWT maker, and a tiny HTTP server on 127.0.0.1 standing in for Label Studio (media, token refresh,
presign) or any other host."""
from __future__ import annotations

import base64
import http.server
import io
import json
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray, exif_orientation: int | None = None, fmt: str = "PNG") -> bytes:
    img = Image.fromarray(array)
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def scene(width: int = 64, height: int = 48) -> np.ndarray:
    """A flat background with a red square (like the captured project's 64x48 images)."""
    img = np.full((height, width, 3), 200, dtype=np.uint8)
    img[10:30, 8:28] = (220, 30, 30)
    return img


def make_jwt(claims: dict[str, Any]) -> str:
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class FakeLabelStudio:
    """A tiny HTTP server standing in for Label Studio (media, token refresh, presign) or any other host."""

    def __init__(self, legacy_token: str = "", refresh_token: str = "") -> None:
        self.legacy_token = legacy_token
        self.refresh_token = refresh_token
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.statuses: dict[str, int] = {}  # path -> forced HTTP status (a failing host)
        self.delays: dict[str, float] = {}  # path -> seconds to wait before answering (a slow host)
        self.requests: list[dict[str, Any]] = []
        self.access_tokens: list[str] = []
        self.access_ttl = 300
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization") or ""
                if outer.legacy_token and auth == f"Token {outer.legacy_token}":
                    return True
                return bool(outer.access_tokens) and auth == f"Bearer {outer.access_tokens[-1]}"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization")})
                if self.path == "/api/token/refresh/" and json.loads(body).get("refresh") == outer.refresh_token:
                    token = make_jwt({"token_type": "access", "exp": time.time() + outer.access_ttl,
                                      "n": len(outer.access_tokens)})
                    outer.access_tokens.append(token)
                    return self._send(200, json.dumps({"access": token}).encode(), "application/json")
                return self._send(401, b'{"detail": "bad refresh"}', "application/json")

            def do_GET(self):
                outer.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
                path = urlsplit(self.path).path
                if path in outer.delays:
                    time.sleep(outer.delays[path])
                if path in outer.statuses:
                    return self._send(outer.statuses[path], b"{}", "application/json")
                if path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[path])
                    self.end_headers()
                    return
                if path.startswith("/tasks/") and path.endswith("/presign/"):
                    if not self._authorized():
                        return self._send(401, b"{}", "application/json")
                    uri = base64.urlsafe_b64decode(parse_qs(urlsplit(self.path).query)["fileuri"][0]).decode()
                    self.send_response(303)
                    self.send_header("Location", outer.redirects.get(uri, "/missing"))
                    self.end_headers()
                    return
                if path.startswith("/data/") and (outer.legacy_token or outer.refresh_token) and not self._authorized():
                    return self._send(401, b'{"detail": "auth"}', "application/json")
                key = self.path if self.path in outer.files else path
                if key not in outer.files:
                    return self._send(404, b"{}", "application/json")
                return self._send(200, outer.files[key], "application/octet-stream")

            def _send(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: shutdown() (every test teardown) returns in 50 ms instead of 500
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
