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
        colours = rgb.astype(np.float32)
        allowed = np.ones((height, width), dtype=bool)
        if bx is not None:
            x0, y0, x1, y1 = bx
            allowed[:] = False
            allowed[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True

        positives = [] if pts is None else [p for p, l in zip(pts, lbl) if l == 1]
        negatives = [] if pts is None else [p for p, l in zip(pts, lbl) if l == 0]
        mask = np.zeros((height, width), dtype=bool)
        for point in positives:
            mask |= self._grow(colours, allowed, point)
        if not positives and bx is not None:
            mask = self._dominant_components(rgb, colours, allowed)
        for point in negatives:
            mask &= ~self._grow(colours, allowed, point)
        logits = np.where(mask, 1.0, -1.0).astype(np.float32)
        return MaskPrediction(mask=mask, score=_solidity(mask), logits=logits)

    # ----------------------------------------------------------------------------------------------
    def _similar(self, colours: np.ndarray, reference: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        distance = np.sqrt(((colours - reference) ** 2).sum(axis=2))
        return (distance <= self.tolerance) & allowed

    def _grow(self, colours: np.ndarray, allowed: np.ndarray, point: np.ndarray) -> np.ndarray:
        """Connected region of the clicked pixel's colour (empty when the click is outside `allowed`)."""
        height, width = allowed.shape
        col, row = min(int(point[0]), width - 1), min(int(point[1]), height - 1)
        if not allowed[row, col]:
            return np.zeros_like(allowed)
        similar = self._similar(colours, colours[row, col], allowed)
        _, components = cv2.connectedComponents(similar.astype(np.uint8), connectivity=4)
        return components == components[row, col]

    def _dominant_components(self, rgb: np.ndarray, colours: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        inside = rgb[allowed]
        bins = (inside[:, 0] >> 4).astype(np.int32) * 256 + (inside[:, 1] >> 4) * 16 + (inside[:, 2] >> 4)
        dominant_bin = np.bincount(bins, minlength=4096).argmax()
        reference = inside[bins == dominant_bin].astype(np.float32).mean(axis=0)
        similar = self._similar(colours, reference, allowed)
        count, components, stats, _ = cv2.connectedComponentsWithStats(similar.astype(np.uint8), connectivity=4)
        if count <= 1:
            return np.zeros_like(allowed)
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= self.min_component_fraction * areas.max())
        return np.isin(components, keep)


def _solidity(mask: np.ndarray) -> float:
    """Mask area / area of its filled convex hull (pixels), 0 for an empty mask."""
    if not mask.any():
        return 0.0
    hull = cv2.convexHull(cv2.findNonZero(mask.astype(np.uint8)))
    filled = np.zeros(mask.shape, dtype=np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    return float(mask.sum() / max(int(filled.sum()), 1))
