"""Brush RLE round trip (mask -> Label Studio RLE list -> mask): ls_io.rle vs the reference codecs.

Peers: label_studio_sdk.converter.brush (mask2rle / decode_rle, pure Python) and, when installed, the Rust
package label-studio-brush-rle-rs (encode_rle on the RGBA-expanded array, decode_rle to RGBA). Masks: blobs at
1920x1080 and 4000x3000, all codecs checked byte-identical first. Single thread, median of repeats, ms.
ratio = (best peer round trip) / (ours), the smaller over the two sizes.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
from label_studio_sdk.converter import brush

from ls_io.rle import decode_rle, encode_rle


def blob_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A few overlapping ellipses (a typical SAM mask: long runs, a few thousand run boundaries)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.05, 0.25) * height, rng.uniform(0.05, 0.25) * width
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return mask.astype(np.uint8) * 255


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def codecs() -> dict[str, tuple[Callable, Callable]]:
    out = {
        "ls_io.rle": (encode_rle, lambda rle, h, w: decode_rle(rle, h, w)),
        "label_studio_sdk": (brush.mask2rle, lambda rle, h, w: brush.decode_rle(rle).reshape(h, w, 4)[:, :, 3]),
    }
    try:
        import label_studio_brush_rle_rs as rs  # deferred: optional (dev-only Rust codec); the benchmark runs without it

        out["label-studio-brush-rle-rs"] = (
            lambda m: list(rs.encode_rle(np.repeat(m.ravel(), 4), 8, [3, 4, 8, 16])),
            lambda rle, h, w: np.asarray(rs.decode_rle(rle, False)).reshape(h, w, 4)[:, :, 3],
        )
    except ImportError:
        print("label-studio-brush-rle-rs not installed: comparing with the SDK only")
    return out


def run(args) -> float:
    ratios = []
    for height, width, repeat in ((1080, 1920, 30), (3000, 4000, 8)):
        mask = blob_mask(height, width)
        reference = None
        timings = {}
        for name, (enc, dec) in codecs().items():
            rle = enc(mask)
            if reference is None:
                reference = rle
            assert rle == reference, f"{name} output differs"
            assert np.array_equal(dec(rle, height, width), mask), f"{name} does not round-trip"
            n = args.repeat or repeat
            e = _median_ms(lambda: enc(mask), n if name != "label-studio-brush-rle-rs" else max(2, n // 10))
            d = _median_ms(lambda: dec(rle, height, width), n)
            timings[name] = (e, d)
            print(f"{width}x{height} {name:26s} encode {e:8.2f} ms  decode {d:8.2f} ms  round trip {e + d:8.2f} ms")
        ours_encode, ours_decode = timings.pop("ls_io.rle")
        ours = ours_encode + ours_decode
        best_name, best = min(((k, sum(v)) for k, v in timings.items()), key=lambda kv: kv[1])
        rs = timings.get("label-studio-brush-rle-rs")
        if rs is not None:  # same measurements as the table above
            print(f"{width}x{height} decode vs Rust: {ours_decode / rs[1]:.2f}x the Rust crate's time (goal <= 3x)")
        print(f"{width}x{height} round trip: ours {ours:.2f} ms, best peer {best_name} {best:.2f} ms -> {best / ours:.1f}x")
        ratios.append(best / ours)
    return min(ratios)
