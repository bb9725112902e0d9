"""A classical click-to-mask fallback for machines without SAM 2 weights (offline demo, end-to-end tests).

It is NOT a learned segmenter: it grows regions of similar colour. It works on flat-coloured objects
(synthetic scenes, diagrams, UI screenshots) and fails on real photographs with shading and texture.
Results carry `segmenter = "region-grow"` in their provenance wherever the backend reports them.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import cv2
import numpy as np

from .types import MaskPrediction, as_rgb_uint8, validate_prompts


class RegionGrowSegmenter:
    """Colour region growing with the same `predict(image, points, labels, box)` interface as Sam2Segmenter.

    - positive points: union of the connected regions (4-connectivity) of pixels within `tolerance`
      (Euclidean RGB distance, 0..441) of each clicked pixel's colour;
    - a box restricts growing to the box; a box without positive points takes the box's dominant colour
      (most frequent 16-level-per-channel colour bin) and keeps its connected components inside the box
      whose area is at least `min_component_fraction` of the largest one (drops stray texture pixels);
    - negative points: the regions grown the same way from them are removed, so a negative click on a
      second object of the same colour drops it (a negative click on the SAME connected region removes it all);
    - score: solidity = mask area / pixel area of its filled convex hull, in (0, 1] (1 for convex shapes),
      0 for an empty mask;
    - logits: float32 [H, W], +1 inside and -1 outside (there are no learned logits); `mask_input` is ignored.
    """

    name = "region-grow"

    def __init__(self, tolerance: float = 30.0, min_component_fraction: float = 0.1) -> None:
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0 (RGB distance), got {tolerance}")
        if not 0 < min_component_fraction <= 1:
            raise ValueError(f"min_component_fraction must be in (0, 1], got {min_component_fraction}")
        self.tolerance = float(tolerance)
        self.min_component_fraction = float(min_component_fraction)

    def predict(
        self,
        image: Any,
        points: Optional[Sequence] = None,
        labels: Optional[Sequence] = None,
        box: Optional[Sequence] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask: Optional[bool] = None,
    ) -> MaskPrediction:
        """Mask bool [H, W] from clicks (x, y pixels; 1 positive, 0 negative) and/or a box (x0, y0, x1, y1 pixels)."""
        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        pts, lbl, bx = validate_prompts(height, width, points, labels, box)
        # Growing never leaves the box: work on the box's pixels only (a view, no copy).
        top, left, bottom, right = 0, 0, height, width
        if bx is not None:
            x0, y0, x1, y1 = bx
            top, left, bottom, right = int(np.floor(y0)), int(np.floor(x0)), int(np.ceil(y1)), int(np.ceil(x1))
        area = rgb[top:bottom, left:right]
        if not area.flags.writeable:  # cv2.floodFill takes the image as in/out even with FLOODFILL_MASK_ONLY
            area = area.copy()

        # each click's pixel (x == width, Label Studio's 100 %, is the last one), in the box's coordinates
        clicks = [] if pts is None else [(min(int(y), height - 1) - top, min(int(x), width - 1) - left, label)
                                         for (x, y), label in zip(pts, lbl)]
        positives = [(row, col) for row, col, label in clicks if label == 1]
        negatives = [(row, col) for row, col, label in clicks if label == 0]
        inside = np.zeros(area.shape[:2], dtype=bool)
        for row, col in positives:
            inside |= self._grow(area, row, col)
        if not positives and bx is not None:
            inside = self._dominant_components(area)
        for row, col in negatives:
            inside &= ~self._grow(area, row, col)
        mask = np.zeros((height, width), dtype=bool)
        mask[top:bottom, left:right] = inside
        logits = np.full((height, width), -1.0, dtype=np.float32)
        logits[mask] = 1.0
        return MaskPrediction(mask=mask, score=_solidity(inside), logits=logits)

    # ----------------------------------------------------------------------------------------------
    def _grow(self, area: np.ndarray, row: int, col: int) -> np.ndarray:
        """Connected region of the clicked pixel's colour within `area` (empty when the click is outside it).

        Why a flood fill first: it visits only the region (not the whole image) under the per-channel test
        |diff| <= tolerance, which every pixel within the Euclidean tolerance passes; the exact test then runs on
        the filled pixels alone, and only when some fail are the components recomputed inside the fill's rectangle.
        """
        height, width = area.shape[:2]
        grown = np.zeros((height, width), dtype=bool)
        if not (0 <= row < height and 0 <= col < width):
            return grown
        reach = min(int(np.floor(self.tolerance)), 255)
        fill = np.zeros((height + 2, width + 2), dtype=np.uint8)
        flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
        _, _, _, (x, y, w, h) = cv2.floodFill(area, fill, (col, row), 0, (reach,) * 3, (reach,) * 3, flags)
        filled = fill[1 + y : 1 + y + h, 1 + x : 1 + x + w].view(bool)
        offsets = area[y : y + h, x : x + w][filled].astype(np.int32) - area[row, col].astype(np.int32)
        near = np.einsum("ij,ij->i", offsets, offsets) <= self.tolerance**2
        if near.all():
            grown[y : y + h, x : x + w] = filled
            return grown
        similar = np.zeros((h, w), dtype=np.uint8)
        similar[filled] = near
        _, components = cv2.connectedComponents(similar, connectivity=4)
        grown[y : y + h, x : x + w] = components == components[row - y, col - x]
        return grown

    def _dominant_components(self, area: np.ndarray) -> np.ndarray:
        """Components of the box's dominant colour, as large as `min_component_fraction` of the largest."""
        pixels = area.reshape(-1, 3)
        bins = (pixels[:, 0] >> 4).astype(np.int32) * 256 + (pixels[:, 1] >> 4) * 16 + (pixels[:, 2] >> 4)
        dominant_bin = np.bincount(bins, minlength=4096).argmax()
        reference = pixels[bins == dominant_bin].astype(np.float32).mean(axis=0)
        distance = np.sqrt(((area.astype(np.float32) - reference) ** 2).sum(axis=2))
        similar = (distance <= self.tolerance).astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(similar, connectivity=4)
        if count <= 1:
            return np.zeros(area.shape[:2], dtype=bool)
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= self.min_component_fraction * areas.max())
        return np.isin(components, keep)


def _solidity(mask: np.ndarray) -> float:
    """Mask area / area of its filled convex hull (pixels), 0 for an empty mask."""
    area = int(np.count_nonzero(mask))
    if not area:
        return 0.0
    # The hull of the outer contours is the hull of every pixel (its corners lie on them), from far fewer points.
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    x, y, w, h = cv2.boundingRect(hull)
    filled = np.zeros((h, w), dtype=np.uint8)  # the hull's bounding box only, not the whole image
    cv2.fillConvexPoly(filled, hull - np.array([x, y], dtype=hull.dtype), 1)
    return float(area / max(int(np.count_nonzero(filled)), 1))
