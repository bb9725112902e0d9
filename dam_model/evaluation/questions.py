"""DLC-style questions about one region's attributes, the judges' verdicts, and the Judge interface.

Questions per region (``make_questions``):
- positive: shape (the object's category), colour, size, position, context (image objects) or motion (videos);
- negative: two other colours, two other shapes, one other size, one other position, the opposite pair relation
  when the context is "the leftmost/rightmost/topmost/bottommost of two ..." (a "next to" context has no
  negative: another neighbour might really exist), one other motion for videos. Choices are drawn by a generator
  seeded from the attributes and the region's index, so the question set is stable between runs.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from dam_model.synthetic import COLORS, MOTIONS, PAIR_RELATIONS, POSITIONS, SHAPES, SIZES, context_phrase

CORRECT, NOT_MENTIONED, WRONG = "correct", "not_mentioned", "wrong"
OUTCOMES = (CORRECT, NOT_MENTIONED, WRONG)
ATTRIBUTE_NOUNS = {
    "shape": "shape", "color": "colour", "size": "size", "position": "position in the image",
    "context": "relation to the other objects", "motion": "motion",
}
_OPPOSITE = {"leftmost": "rightmost", "rightmost": "leftmost", "topmost": "bottommost", "bottommost": "topmost"}


@dataclass(frozen=True)
class Question:
    """One DLC-style question. kind: "positive" | "negative"; attribute: a key of ATTRIBUTE_NOUNS;
    value: the canonical value asked about (the true one for positive, an absent one for negative);
    context questions carry the relation dict as JSON in ``value``."""

    kind: str
    attribute: str
    value: str

    @property
    def phrase(self) -> str:
        """The value as words that complete "the object is ...": "red", "a circle", "in the top left of the image"."""
        if self.attribute == "shape":
            return f"a {self.value}" if self.value[0] not in "aeiou" else f"an {self.value}"
        if self.attribute == "position":
            return f"in the {self.value} of the image"
        if self.attribute == "context":
            return context_phrase(json.loads(self.value))
        return self.value

    @property
    def text(self) -> str:
        if self.kind == "positive":
            return f"What does the description say about the object's {ATTRIBUTE_NOUNS[self.attribute]}?"
        return f"Does the description say that the object is {self.phrase}?"

    def choices(self) -> list[tuple[str, str]]:
        """(choice text, outcome) pairs in letter order A, B, C."""
        noun = ATTRIBUTE_NOUNS[self.attribute]
        if self.kind == "positive":
            return [
                (f"The description says that the object is {self.phrase}.", CORRECT),
                (f"The description does not mention the object's {noun}.", NOT_MENTIONED),
                (f"The description gives the object a {noun} other than {self.phrase}.", WRONG),
            ]
        return [
            (f"The description says that the object is {self.phrase}.", WRONG),
            (f"The description does not say that the object is {self.phrase}.", CORRECT),
        ]


@dataclass(frozen=True)
class Verdict:
    """A judge's answer to one question. outcome: CORRECT / NOT_MENTIONED / WRONG (for a negative question
    WRONG means the absent value was claimed, CORRECT that it was not). answer: the letter or the rule's note."""

    question: Question
    outcome: str
    answer: str = ""


def make_questions(attributes: Mapping[str, Any], *, key: int = 0) -> list[Question]:
    """DLC-style questions for one region's attributes (see the module docstring); key: the region's index."""
    for name in ("color", "shape", "size", "position"):
        if name not in attributes:
            raise ValueError(f"attributes lack {name!r}")
    identity = json.dumps([attributes["color"], attributes["shape"], attributes["size"], attributes["position"],
                           attributes.get("motion"), int(key)])
    rng = np.random.default_rng(zlib.crc32(identity.encode()))
    questions = [Question("positive", name, str(attributes[name])) for name in ("shape", "color", "size", "position")]
    relation = attributes.get("context_relation")
    if relation:
        questions.append(Question("positive", "context", json.dumps(relation, sort_keys=True)))
    if attributes.get("motion"):
        questions.append(Question("positive", "motion", str(attributes["motion"])))

    def others(pool: Sequence[str], true: str, k: int) -> list[str]:
        candidates = [v for v in pool if v != true]
        return [candidates[int(i)] for i in rng.choice(len(candidates), size=min(k, len(candidates)), replace=False)]

    for name, pool, k in (("color", list(COLORS), 2), ("shape", SHAPES, 2), ("size", SIZES, 1), ("position", POSITIONS, 1)):
        questions += [Question("negative", name, v) for v in others(pool, str(attributes[name]), k)]
    if relation and relation.get("relation") in PAIR_RELATIONS:
        false = {**relation, "relation": _OPPOSITE[relation["relation"]]}
        questions.append(Question("negative", "context", json.dumps(false, sort_keys=True)))
    if attributes.get("motion"):
        questions += [Question("negative", "motion", v) for v in others(MOTIONS, str(attributes["motion"]), 1)]
    return questions


class Judge(Protocol):
    """Anything that answers DLC-style questions about one caption."""

    def score(self, caption: str, questions: Sequence[Question]) -> list[Verdict]: ...
