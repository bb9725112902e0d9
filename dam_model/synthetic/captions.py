"""The caption grammar of synthetic objects (short and long references) and imperfect "model" captions."""
from __future__ import annotations

from typing import Any

import numpy as np

from .vocabulary import COLORS, PAIR_RELATIONS, POSITIONS, SHAPE_PLURALS, SHAPES, SIZES


def article(word: str) -> str:
    """'an' before a vowel sound in this vocabulary ("an orange"), otherwise 'a'."""
    return "an" if word[:1] in "aeiou" else "a"


def context_phrase(relation: dict[str, str]) -> str:
    """The context dict as words: "the leftmost of two red circles" or "next to a blue square"."""
    color, shape = relation["color"], relation["shape"]
    if relation["relation"] == "next_to":
        return f"next to {article(color)} {color} {shape}"
    if relation["relation"] in PAIR_RELATIONS:
        return f"the {relation['relation']} of two {color} {SHAPE_PLURALS[shape]}"
    raise ValueError(f"unknown context relation {relation['relation']!r}")


def short_caption(attributes: dict[str, Any]) -> str:
    """'a small red circle' (+ ' moving left to right' for video objects)."""
    words = f"{attributes['size']} {attributes['color']} {attributes['shape']}"
    if attributes.get("motion"):
        words += f" {attributes['motion']}"
    return f"{article(words)} {words}"


# How much a still object's long caption asserts. "full" (the default, the generator's captions since version 1):
# appearance, position, then the context sentence. "position" drops the context sentence, "appearance" keeps only
# "A small red circle." The tiny models could not learn the context (right 6 % of the time) or, in a few minutes,
# the position: a caption style that asserts only what its model gets right (dam_tools.build_tiny_model).
CAPTION_STYLES: tuple[str, ...] = ("full", "position", "appearance")


def check_caption_style(style: str) -> str:
    if style not in CAPTION_STYLES:
        raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")
    return style


def long_caption(attributes: dict[str, Any], style: str = "full") -> str:
    """One or two sentences: appearance and position, then the context (image) or the start cell (video).

    style (still objects only): one of CAPTION_STYLES, "full" by default.
    """
    check_caption_style(style)
    words = f"{attributes['size']} {attributes['color']} {attributes['shape']}"
    head = f"{article(words).capitalize()} {words}"
    if attributes.get("motion"):
        return f"{head} {attributes['motion']}. It starts in the {attributes['position']} of the image."
    if style == "appearance":
        return f"{head}."
    text = f"{head} in the {attributes['position']} of the image."
    if attributes.get("context") and style == "full":
        text += f" It is {attributes['context']}."
    return text


MODEL_ERRORS: tuple[str, ...] = ("none", "color", "shape", "size", "position", "context", "short")


def perturbed_caption(attributes: dict[str, Any], rng: np.random.Generator,
                      error: str | None = None) -> tuple[str, str]:
    """A plausible imperfect model caption for an object, and the kind of error made.

    error: one of MODEL_ERRORS ("none": the reference long caption; "color" / "shape" / "size" / "position":
    that attribute swapped for another value; "context": the context sentence dropped; "short": only the short
    caption), or None to draw one. Used to emit "model caption vs corrected caption" pairs.
    """
    if error is None:
        error = MODEL_ERRORS[int(rng.integers(len(MODEL_ERRORS)))]
    if error not in MODEL_ERRORS:
        raise ValueError(f"unknown error kind {error!r}; expected one of {MODEL_ERRORS}")
    wrong = dict(attributes)
    pools = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}
    if error in pools:
        others = [v for v in pools[error] if v != attributes[error]]
        wrong[error] = others[int(rng.integers(len(others)))]
    elif error == "context":
        wrong["context"] = None
    elif error == "short":
        return short_caption(attributes), error
    return long_caption(wrong), error
