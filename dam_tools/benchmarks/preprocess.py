"""Region preprocessing: dam_model.focal.preprocess_regions (shared work, vectorised) vs a straightforward
per-region PIL pipeline (the release's way: every region re-resizes the full image, masks as 3-channel RGB,
float arithmetic per view). Both produce the same float32 [N, 8, 384, 384] tensor (asserted bit-equal first).
Image 1280x960 RGB, 8 regions of varied size; median of repeats in ms, the two sides timed in alternation (one
run of each per round), so load from other processes hits both alike. dam_model is timed serially (workers=1)
(its default) and, for information, with a thread pool over regions; the per-region pipeline is serial.
ratio = per-region pipeline time / dam_model serial time (like for like, one thread each).
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from PIL import Image

from dam_model.focal import default_workers, focal_crop_box, preprocess_regions

SIZE = 384


def scene(height: int = 960, width: int = 1280, regions: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:height, :width]
    image = (rng.random((height, width, 3)) * 40 + np.linspace(0, 200, width)[None, :, None]).astype(np.uint8)
    masks = []
    for k in range(regions):
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        radius = [12, 30, 60, 120, 200, 25, 80, 300][k % 8]
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2)
    return image, masks


def per_region_pipeline(image: np.ndarray, masks: list[np.ndarray], size: int = SIZE) -> np.ndarray:
    """One region at a time, as the release does it: PIL views, 3-channel mask images, float maths per view."""
    def to_float(view: np.ndarray) -> np.ndarray:  # rescale (float64) then normalise (float32), as the release
        scaled = (view.astype(np.float64) * (1 / 255)).astype(np.float32)
        return (scaled - np.float32(0.5)) / np.float32(0.5)

    out = []
    for mask in masks:
        x0, y0, x1, y1 = focal_crop_box(mask)
        mask_image = Image.fromarray((mask > 0).astype(np.uint8) * 255).convert("RGB")
        full = Image.fromarray(image)
        views = []
        for rgb, m in ((full, mask_image), (full.crop((x0, y0, x1, y1)), mask_image.crop((x0, y0, x1, y1)))):
            rgb_arr = np.asarray(rgb.resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)
            mask_arr = np.asarray(m.resize((size, size), Image.BICUBIC))[:, :, 0][None]
            views += [to_float(rgb_arr), to_float(mask_arr)]
        out.append(np.concatenate(views))
    return np.stack(out)


def _median_ms(*fns, repeat: int) -> list[float]:
    """Median wall time (ms) of each function, run in alternation: one run of each per round, after a warm-up."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append((time.perf_counter() - start) * 1000)
    return [statistics.median(spent) for spent in times]


def run(args) -> float:
    torch.set_num_threads(1)
    repeat = args.repeat or 7
    image, masks = scene()
    fast = preprocess_regions(image, masks, SIZE)
    slow = per_region_pipeline(image, masks)
    assert np.array_equal(fast.pixel_values.numpy(), slow), "vectorised and per-region tensors differ"
    print(f"image 1280x960, {len(masks)} regions -> float32 {tuple(fast.pixel_values.shape)}; "
          f"{int(fast.is_focal.sum())} focal, tensors bit-identical")
    threads = max(2, default_workers())
    per_region, vectorised = _median_ms(lambda: per_region_pipeline(image, masks),
                                        lambda: preprocess_regions(image, masks, SIZE), repeat=repeat)
    threaded, = _median_ms(lambda: preprocess_regions(image, masks, SIZE, workers=threads), repeat=repeat)
    one_slow, one_fast = _median_ms(lambda: per_region_pipeline(image, masks[:1]),
                                    lambda: preprocess_regions(image, masks[:1], SIZE), repeat=repeat)
    print(f"per-region PIL pipeline, 1 thread : {per_region:8.1f} ms for 8 regions ({one_slow:.1f} ms for 1)")
    print(f"dam_model shared work, 1 thread   : {vectorised:8.1f} ms for 8 regions ({one_fast:.1f} ms for 1)")
    print(f"dam_model shared work, {threads} threads  : {threaded:8.1f} ms for 8 regions "
          f"(ratio {per_region / threaded:.2f}; not the reported ratio)")
    return per_region / vectorised
