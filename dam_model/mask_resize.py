"""PIL's bicubic resize of a 0/255 mask image, computed over the part its foreground reaches (bit-identical).

Why it is exact: PIL resizes an 8-bit image in two separable passes, horizontal and vertical, rounding to 8 bits in
between; a pass along an axis whose size does not change is skipped, and a pass over all-zero rows (or columns)
gives zeros. So the first pass runs on the rows (or columns) of the mask's box alone and the second on the
intermediate's non-zero columns (or rows) alone: each is PIL's own pass over an image of the same size along its
axis, with the same coefficients. Which pass runs first is Pillow's choice from the sizes (recent versions pick it
by cost; the rule is not public API), so it is observed once per geometry on a noise image and cached; a geometry
where it cannot be told is resized whole.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

HORIZONTAL_FIRST, VERTICAL_FIRST = "hv", "vh"


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))


@lru_cache(maxsize=64)
def pass_order(height: int, width: int, out_height: int, out_width: int) -> str | None:
    """HORIZONTAL_FIRST or VERTICAL_FIRST: the order of PIL's two bicubic passes for this geometry (both are run
    only when both sizes change); None when a noise image cannot tell them apart."""
    if height == out_height or width == out_width:
        return HORIZONTAL_FIRST  # one pass only: any order gives PIL's result
    noise = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    whole = _resize(noise, out_width, out_height)
    horizontal_first = np.array_equal(whole, _resize(_resize(noise, out_width, height), out_width, out_height))
    vertical_first = np.array_equal(whole, _resize(_resize(noise, width, out_height), out_width, out_height))
    if horizontal_first != vertical_first:
        return HORIZONTAL_FIRST if horizontal_first else VERTICAL_FIRST
    return None


def resize_mask(binary: np.ndarray, box: Sequence[int], size: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """(PIL bicubic resize of the 0/255 image of bool `binary` to size x size, the window of the result outside
    which it is zero). `box`: the tight box (x0, y0, w, h) of the foreground."""
    height, width = binary.shape
    x0, y0, w, h = (int(v) for v in box)
    order = pass_order(height, width, size, size)
    out = np.zeros((size, size), dtype=np.uint8)
    if order == HORIZONTAL_FIRST:
        rows = _resize(binary[y0 : y0 + h].view(np.uint8) * np.uint8(255), size, h)  # horizontal pass, box rows
        cols = np.flatnonzero(rows.any(axis=0))
        if not len(cols):
            return out, (slice(0, 0), slice(0, 0))
        first, end = int(cols[0]), int(cols[-1]) + 1
        middle = np.zeros((height, end - first), dtype=np.uint8)
        middle[y0 : y0 + h] = rows[:, first:end]
        out[:, first:end] = _resize(middle, end - first, size)  # vertical pass, non-zero columns
        return out, (slice(None), slice(first, end))
    if order == VERTICAL_FIRST:
        cols = _resize(binary[:, x0 : x0 + w].view(np.uint8) * np.uint8(255), w, size)  # vertical pass, box columns
        rows = np.flatnonzero(cols.any(axis=1))
        if not len(rows):
            return out, (slice(0, 0), slice(0, 0))
        first, end = int(rows[0]), int(rows[-1]) + 1
        middle = np.zeros((end - first, width), dtype=np.uint8)
        middle[:, x0 : x0 + w] = cols[first:end]
        out[first:end] = _resize(middle, size, end - first)  # horizontal pass, non-zero rows
        return out, (slice(first, end), slice(None))
    return _resize(binary.view(np.uint8) * np.uint8(255), size, size), (slice(None), slice(None))
