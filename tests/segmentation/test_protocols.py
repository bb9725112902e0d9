"""Both segmenters satisfy the interfaces they implement, so callers can ask isinstance instead of hasattr."""
from __future__ import annotations

import ast
from pathlib import Path

from dam_model.segmentation import (
    AutoMaskSegmenter, RegionGrowSegmenter, Sam2Segmenter, Segmenter, VideoSegmenter, build_segmenter,
)

SEGMENTATION = Path(__file__).resolve().parents[2] / "dam_model" / "segmentation"


def test_sam2_segmenter_is_every_kind_of_segmenter(segmenter):
    assert isinstance(segmenter, Sam2Segmenter)
    assert isinstance(segmenter, Segmenter)
    assert isinstance(segmenter, VideoSegmenter)
    assert isinstance(segmenter, AutoMaskSegmenter)


def test_region_grow_is_a_segmenter_only():
    region = build_segmenter("region")
    assert isinstance(region, RegionGrowSegmenter) and isinstance(region, Segmenter)
    assert not isinstance(region, VideoSegmenter)
    assert not isinstance(region, AutoMaskSegmenter)


def test_video_module_does_not_import_the_segmenter():
    """sam2_segmenter.py imports video.py; video.py must not import it back (no import cycle)."""
    tree = ast.parse((SEGMENTATION / "video.py").read_text())
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in modules if "sam2_segmenter" in m], modules
