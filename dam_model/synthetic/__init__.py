"""Seeded synthetic scenes for localized captioning, with exact ground truth.

No pretrained weights reach this project, so it carries its own learning problem: textured images with a few
flat-coloured shapes, a mask per shape (its VISIBLE pixels), the attribute record of each shape and reference
captions at two lengths written in a small, regular grammar that the tiny model and the rule judge share.

Attributes of an image object (keys of ``SceneObject.attributes``):

- ``color``: one of ``COLORS`` (7 names); ``shape``: one of ``SHAPES`` (6 names, the object's "category");
- ``size``: ``small`` / ``medium`` / ``large``, the shape's diameter as a fraction of the image's shorter side
  (ranges in ``SIZE_FRACTIONS``; the ranges leave gaps so the word is never ambiguous);
- ``position``: the 3x3 grid cell of the shape's centre (``POSITIONS``, e.g. "top left", "center right");
- ``context``: a phrase only the rest of the image can confirm: "the leftmost of two red circles" (also
  rightmost / topmost / bottommost) when exactly one other object has the same colour and shape, otherwise
  "next to a blue square" naming the object whose visible centroid is nearest; ``context_relation`` holds it
  as a dict {relation, color, shape}. Relations are computed from the visible masks' centroids.

Captions (the grammar; ``a``/``an`` follows the next word):
    short: "a small red circle"
    long:  "A small red circle in the top left of the image. It is the leftmost of two red circles."
    (``caption_style="position"`` drops the second sentence, ``"appearance"`` keeps "A small red circle.")
Video objects replace the context with a motion ("moving left to right", ..., "staying still"):
    short: "a small red circle moving left to right"
    long:  "A small red circle moving left to right. It starts in the top left of the image."

Determinism: every random draw comes from ``numpy.random.default_rng([seed, index, stream])`` and the drawing
is numpy arithmetic on pixel centres (no fonts, no anti-aliasing, no trigonometry at run time: the star's
vertices are constants), so the same (seed, index) gives byte-identical images, masks and captions anywhere.
Sizes are given as (width, height) like PIL; arrays are (height, width[, 3]) like numpy.
"""
from __future__ import annotations

from .captions import CAPTION_STYLES, MODEL_ERRORS, article, context_phrase, long_caption, perturbed_caption, short_caption
from .drawing import position_of
from .samples import iter_region_samples, iter_video_region_samples
from .scenes import Scene, SceneObject, generate_dataset, generate_scene
from .videos import VideoObject, VideoScene, generate_video
from .vocabulary import (
    COLORS, COLUMNS, DEFAULT_SIZE_WEIGHTS, DEFAULT_SIZES, GENERATOR_VERSION, MIN_OBJECT_PX, MIN_SIDE_PX, MOTIONS,
    PAIR_RELATIONS, POSITIONS, ROWS, SHAPE_PLURALS, SHAPES, SIZE_FRACTIONS, SIZES, VIDEO_SIZES,
)

__all__ = [
    "CAPTION_STYLES", "COLORS", "COLUMNS", "DEFAULT_SIZES", "DEFAULT_SIZE_WEIGHTS", "GENERATOR_VERSION", "MIN_OBJECT_PX", "MIN_SIDE_PX",
    "MODEL_ERRORS", "MOTIONS", "PAIR_RELATIONS", "POSITIONS", "ROWS", "SHAPES", "SHAPE_PLURALS", "SIZES",
    "SIZE_FRACTIONS", "Scene", "SceneObject", "VIDEO_SIZES", "VideoObject", "VideoScene", "article", "context_phrase",
    "generate_dataset", "generate_scene", "generate_video", "iter_region_samples", "iter_video_region_samples",
    "long_caption", "perturbed_caption", "position_of", "short_caption",
]
