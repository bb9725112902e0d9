"""The exact judge for the synthetic caption grammar: read what a caption states, compare with the question."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Sequence

from dam_model.synthetic import COLORS, SHAPE_PLURALS, SHAPES

from .questions import CORRECT, NOT_MENTIONED, WRONG, Question, Verdict

COLOR_WORDS: dict[str, str] = {**{c: c for c in COLORS}, "violet": "purple"}
SHAPE_WORDS: dict[str, str] = {
    **{s: s for s in SHAPES}, **{p: s for s, p in SHAPE_PLURALS.items()},
    "disc": "circle", "disk": "circle", "box": "square", "boxes": "square", "plus": "cross", "rhombus": "diamond",
}
SIZE_WORDS: dict[str, str] = {
    "small": "small", "tiny": "small", "little": "small", "medium": "medium", "medium-sized": "medium",
    "mid-sized": "medium", "large": "large", "big": "large", "huge": "large",
}


@dataclass
class ParsedCaption:
    """What a caption says about its subject, canonicalised; contexts are relation dicts."""

    colors: set[str] = field(default_factory=set)
    shapes: set[str] = field(default_factory=set)
    sizes: set[str] = field(default_factory=set)
    positions: set[str] = field(default_factory=set)
    contexts: list[dict[str, str]] = field(default_factory=list)
    motions: set[str] = field(default_factory=set)

    def values(self, attribute: str) -> set[str]:
        if attribute == "context":
            return {json.dumps(c, sort_keys=True) for c in self.contexts}
        return getattr(self, {"color": "colors", "shape": "shapes", "size": "sizes",
                              "position": "positions", "motion": "motions"}[attribute])


_ROW_WORDS = {"top": "top", "upper": "top", "center": "center", "centre": "center", "middle": "center",
              "bottom": "bottom", "lower": "bottom"}
_COL_WORDS = {"left": "left", "right": "right", "center": "center", "centre": "center", "middle": "center"}
_PAIR_RE = re.compile(r"\b(left|right|top|bottom)-?most\s+of\s+(?:the\s+)?two\s+([a-z-]+)\s+([a-z-]+)")
_NEXT_RE = re.compile(r"\b(?:next to|beside|near)\s+(?:a|an|the|one)\s+([a-z-]+)\s+([a-z-]+)")
_MOTION_RE = re.compile(r"\bmoving\s+(?:from\s+)?(left|right|top|bottom)\s+to\s+(?:the\s+)?(left|right|top|bottom)\b"
                        r"|\b(staying still|not moving|stationary|standing still)\b")
_POSITION_RE = re.compile(r"\b(top|upper|center|centre|middle|bottom|lower)[\s-]+(left|right|center|centre|middle)\b"
                          r"|\b(?:the\s+)?(center|centre|middle)\s+of\s+the\s+(?:image|frame|picture|video)\b")
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)?")


def parse_caption(caption: str) -> ParsedCaption:
    """Read colour, shape, size, position, context and motion words off a caption in the synthetic grammar.

    Context phrases are cut out first, so "next to a blue square" does not count as the subject being blue;
    the two objects of "the leftmost of two red circles" do share the subject's colour and shape.
    """
    parsed = ParsedCaption()
    text = " " + caption.lower() + " "

    def cut(match: re.Match[str]) -> str:
        return " | "

    for match in _PAIR_RE.finditer(text):
        color, shape = COLOR_WORDS.get(match.group(2)), SHAPE_WORDS.get(match.group(3))
        parsed.contexts.append({"relation": match.group(1) + "most", "color": color or match.group(2),
                                "shape": shape or match.group(3)})
        if color:
            parsed.colors.add(color)
        if shape:
            parsed.shapes.add(shape)
    text = _PAIR_RE.sub(cut, text)
    for match in _NEXT_RE.finditer(text):
        color, shape = COLOR_WORDS.get(match.group(1)), SHAPE_WORDS.get(match.group(2))
        parsed.contexts.append({"relation": "next_to", "color": color or match.group(1), "shape": shape or match.group(2)})
    text = _NEXT_RE.sub(cut, text)
    for match in _MOTION_RE.finditer(text):
        if match.group(3):
            parsed.motions.add("staying still")
        elif match.group(1) != match.group(2):
            parsed.motions.add(f"moving {match.group(1)} to {match.group(2)}")
    text = _MOTION_RE.sub(cut, text)
    for match in _POSITION_RE.finditer(text):
        if match.group(3):
            parsed.positions.add("center")
            continue
        row, col = _ROW_WORDS[match.group(1)], _COL_WORDS[match.group(2)]
        parsed.positions.add("center" if (row, col) == ("center", "center") else f"{row} {col}")
    text = _POSITION_RE.sub(cut, text)
    for word in _WORD_RE.findall(text):
        if word in COLOR_WORDS:
            parsed.colors.add(COLOR_WORDS[word])
        elif word in SHAPE_WORDS:
            parsed.shapes.add(SHAPE_WORDS[word])
        elif word in SIZE_WORDS:
            parsed.sizes.add(SIZE_WORDS[word])
    return parsed


class RuleJudge:
    """Exact judge for the synthetic caption grammar (see ``parse_caption``)."""

    def score(self, caption: str, questions: Sequence[Question]) -> list[Verdict]:
        parsed = parse_caption(caption)
        verdicts = []
        for question in questions:
            stated = parsed.values(question.attribute)
            if question.kind == "positive":
                outcome = CORRECT if question.value in stated else (WRONG if stated else NOT_MENTIONED)
            else:
                outcome = WRONG if question.value in stated else CORRECT
            verdicts.append(Verdict(question, outcome, "rule:" + ",".join(sorted(stated))))
        return verdicts
