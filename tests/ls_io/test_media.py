"""Media fetching against fake Label Studio / other hosts on 127.0.0.1: token scope, SSRF, limits, EXIF, PAT refresh."""
from __future__ import annotations

import time

import numpy as np
import pytest

from ls_io.errors import MediaRefused, PayloadTooLarge, UpstreamError
from ls_io.media import MediaError, MediaFetcher, decode_image, is_public_address
from fake_label_studio import make_jwt, png_bytes, scene

LEGACY = "0123456789abcdef0123456789abcdef01234567"


def fetcher(make_settings, ls=None, key=LEGACY, resolver=None, **kw) -> MediaFetcher:
    settings = make_settings(label_studio_url=ls.url if ls else "", label_studio_api_key=key if ls else "", **kw)
    return MediaFetcher(settings, resolver=resolver)


def test_token_goes_only_to_label_studio(make_settings, fake_ls):
    ls, other = fake_ls(legacy_token=LEGACY), fake_ls()
    other.files["/img.png"] = png_bytes(scene())
    ls.redirects["/data/upload/1/moved.png"] = other.url + "/img.png"
    ls.files["/data/upload/1/a.png"] = png_bytes(scene())
    f = fetcher(make_settings, ls, media_allow_private=True, media_cache_dir="")
    assert f.load_image("/data/upload/1/a.png").shape == (48, 64, 3)
    assert ls.requests[-1]["auth"] == f"Token {LEGACY}"
    assert f.load_image("/data/upload/1/moved.png").shape == (48, 64, 3)
    assert other.requests and all(r["auth"] is None for r in other.requests), "never follow a redirect with the token"
    f.load_image(other.url + "/img.png")
    assert all(r["auth"] is None for r in other.requests)


def test_cloud_uri_presigned_by_label_studio(make_settings, fake_ls):
    ls, bucket = fake_ls(legacy_token=LEGACY), fake_ls()
    bucket.files["/bucket/a.png"] = png_bytes(scene())
    ls.redirects["s3://bucket/a.png"] = bucket.url + "/bucket/a.png?X-Amz-Signature=abc"
    f = fetcher(make_settings, ls, media_allow_private=True)
    assert f.load_image("s3://bucket/a.png", task_id=12).shape == (48, 64, 3)
    presign = [r for r in ls.requests if "/presign/" in r["path"]]
    assert presign and presign[0]["path"].startswith("/tasks/12/presign/?fileuri=") and presign[0]["auth"]
    assert bucket.requests[0]["auth"] is None
    with pytest.raises(MediaError, match="task id"):
        f.load_image("s3://bucket/a.png")


def test_private_addresses_refused_unless_allowed(make_settings, fake_ls):
    other = fake_ls()
    other.files["/img.png"] = png_bytes(scene())
    f = fetcher(make_settings)
    # A refusal by policy is the request's fault (403), not an upstream failure (502): issue 15.
    with pytest.raises(MediaRefused, match="private address") as refused:
        f.load_image(other.url + "/img.png")
    assert refused.value.status == 403 and refused.value.kind == "media_refused"
    assert not other.requests, "refused before any connection"
    mixed = fetcher(make_settings, resolver=lambda host: ["93.184.216.34", "169.254.169.254"])
    with pytest.raises(MediaRefused, match="169.254.169.254"):
        mixed.fetch_bytes("http://metadata.example/latest")
    listed = fetcher(make_settings, media_allowed_hosts="example.org")
    with pytest.raises(MediaRefused, match="MEDIA_ALLOWED_HOSTS"):
        listed.fetch_bytes("http://elsewhere.org/a.png")
    allowed = fetcher(make_settings, media_allowed_hosts="127.0.0.1")
    assert allowed.load_image(other.url + "/img.png").shape == (48, 64, 3)
    assert [is_public_address(a) for a in ("8.8.8.8", "10.1.2.3", "127.0.0.1", "::1", "fe80::1", "::ffff:10.0.0.1")] == [
        True, False, False, False, False, False]


def test_size_limits_and_decompression_bombs(make_settings, fake_ls):
    ls = fake_ls(legacy_token=LEGACY)
    noisy = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    ls.files["/data/upload/1/big.png"] = png_bytes(noisy)
    f = fetcher(make_settings, ls, media_max_bytes=5000)
    with pytest.raises(PayloadTooLarge):
        f.fetch_bytes("/data/upload/1/big.png")
    bomb = png_bytes(np.zeros((1000, 1000, 3), np.uint8))  # tiny file, a million pixels
    assert len(bomb) < 10_000
    with pytest.raises(PayloadTooLarge, match="pixel"):
        decode_image(bomb, max_pixels=100_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(bomb, max_pixels=400_000)  # PIL's own bomb error (over 2x) is mapped too


def test_exif_orientation_applied():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    rotated = decode_image(png_bytes(img, exif_orientation=6), max_pixels=10_000)
    assert rotated.shape == (40, 20, 3), "orientation 6 = rotate 90 degrees: the mask must match the displayed image"
    assert rotated[:10].mean() > 200 and rotated[-10:].mean() < 50


def test_personal_access_token_refresh_flow(make_settings, fake_ls):
    refresh = make_jwt({"token_type": "refresh", "exp": time.time() + 86400})
    ls = fake_ls(refresh_token=refresh)
    ls.files["/data/upload/1/a.png"] = png_bytes(scene())
    f = fetcher(make_settings, ls, key=refresh, media_cache_dir="")
    assert f.auth.is_pat
    f.fetch_bytes("/data/upload/1/a.png")
    f.fetch_bytes("/data/upload/1/a.png")
    posts = [r for r in ls.requests if r["method"] == "POST"]
    gets = [r for r in ls.requests if r["method"] == "GET"]
    assert len(posts) == 1 and posts[0]["path"] == "/api/token/refresh/", "the access token is reused while valid"
    assert all(g["auth"] == f"Bearer {ls.access_tokens[0]}" for g in gets)
    assert refresh not in str(ls.requests[1:]), "the refresh token itself is never sent as a bearer"
    ls.access_ttl = 10  # shorter than the refresh margin: every use refreshes first
    f.auth._expires_at = 0
    f.fetch_bytes("/data/upload/1/a.png")
    f.fetch_bytes("/data/upload/1/a.png")
    assert len([r for r in ls.requests if r["method"] == "POST"]) == 3
    assert ls.requests[-1]["auth"] == f"Bearer {ls.access_tokens[-1]}"
    bad = fetcher(make_settings, ls, key=make_jwt({"token_type": "refresh", "x": 1}))
    with pytest.raises(UpstreamError, match="personal access token") as err:
        bad.fetch_bytes("/data/upload/1/a.png")
    assert "eyJ" not in str(err.value), "tokens never appear in errors"


def test_auth_failure_message_has_no_token(make_settings, fake_ls):
    ls = fake_ls(legacy_token=LEGACY)
    ls.files["/data/upload/1/a.png"] = png_bytes(scene())
    f = fetcher(make_settings, ls, key="f" * 40)
    with pytest.raises(UpstreamError, match="401") as err:
        f.fetch_bytes("/data/upload/1/a.png")
    assert "f" * 40 not in str(err.value) and "LABEL_STUDIO_API_KEY" in str(err.value)


def test_local_paths_and_cache(make_settings, fake_ls, media_root):
    f = fetcher(make_settings)
    assert f.load_image("images/img1.png").shape == (48, 64, 3)
    assert f.load_image(f"file://{media_root}/images/img1.png").shape == (48, 64, 3)
    with pytest.raises(MediaError, match="outside"):
        f.fetch_bytes("../../etc/passwd")
    with pytest.raises(MediaError, match="outside"):
        f.fetch_bytes("/etc/passwd")
    ls = fake_ls(legacy_token=LEGACY)
    ls.files["/data/upload/1/a.png"] = png_bytes(scene())
    cached = fetcher(make_settings, ls)
    cached.fetch_bytes("/data/upload/1/a.png")
    cached.fetch_bytes("/data/upload/1/a.png")
    assert len(ls.requests) == 1, "the second read comes from the on-disk cache"


def test_unreachable_and_timeout(make_settings):
    from ls_io.errors import UpstreamTimeout

    f = fetcher(make_settings, media_allow_private=True, media_timeout=0.5)
    with pytest.raises(UpstreamError, match="unreachable"):
        f.fetch_bytes("http://127.0.0.1:9/none.png")  # discard port: connection refused
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts, never answers
    try:
        with pytest.raises(UpstreamTimeout):
            f.fetch_bytes(f"http://127.0.0.1:{srv.getsockname()[1]}/slow.png")
    finally:
        srv.close()
