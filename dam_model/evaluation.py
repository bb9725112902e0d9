"""Reference-free evaluation in the manner of DLC-Bench, and reference caption metrics.

DLC-Bench judges a detailed localized caption by asking an LLM multiple-choice questions about the region:
positive questions about attributes the object HAS and negative questions about attributes it LACKS. Here the
attributes come from the synthetic generator (``dam_model.synthetic``), so the questions are exact.

Questions per region (``make_questions``):
- positive: shape (the object's category), colour, size, position, context (image objects) or motion (videos);
- negative: two other colours, two other shapes, one other size, one other position, the opposite pair relation
  when the context is "the leftmost/rightmost/topmost/bottommost of two ..." (a "next to" context has no
  negative: another neighbour might really exist), one other motion for videos. Choices are drawn by a generator
  seeded from the attributes and the region's index, so the question set is stable between runs.

Scoring rules (``ScoringRules``, the defaults are this project's reading of DLC-Bench):
- positive question: +1 when the caption states the true value, 0 when it does not mention the attribute,
  ``positive_wrong`` (default -1) when it states another value only;
- negative question: +1 when the caption does NOT claim the absent value, ``negative_claimed`` (default -1)
  when it does;
- recognition gate: when the caption names a wrong shape (the category) every positive question of that region
  counts 0 (penalties included); its negative questions are still scored. An unnamed shape does not trip the gate;
- per region: positive = sum of positive scores / number of positive questions, negative likewise, each clipped
  to [0, 1] (so penalties eat into that region's credit but a region never goes below 0);
- overall: positive and negative are means over regions; average = (positive + negative) / 2. The same three
  numbers are given per size bucket (small / medium / large).

Two judges share one interface, ``Judge.score(caption, questions) -> list[Verdict]``:
- ``RuleJudge`` parses the small caption grammar of ``dam_model.synthetic`` (with a few synonyms, listed in
  ``COLOR_WORDS``, ``SHAPE_WORDS`` and ``SIZE_WORDS``); exact on synthetic data;
- ``ChatJudge`` asks an OpenAI-compatible ``/v1/chat/completions`` endpoint (e.g. vLLM) one multiple-choice
  question at a time, DLC-Bench style, and reads the choice letter. Only urllib is used (no requests).

Caption metrics (reference-based, for the nightly evaluate step) follow pycocoevalcap's formulas on a simple
lower-case word tokenisation: corpus BLEU-1..4 ("closest" reference length, brevity penalty), ROUGE-L
(F-measure with beta 1.2, best reference), CIDEr-D (tf-idf over 1..4-grams from the references, clipped counts,
Gaussian length penalty with sigma 6, x10), and the edit effort (Levenshtein distance / longer length, by words
and by characters).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

from dam_model.synthetic import (
    COLORS, MOTIONS, PAIR_RELATIONS, POSITIONS, SHAPE_PLURALS, SHAPES, SIZES, context_phrase,
)

logger = logging.getLogger(__name__)

CORRECT, NOT_MENTIONED, WRONG = "correct", "not_mentioned", "wrong"
OUTCOMES = (CORRECT, NOT_MENTIONED, WRONG)
ATTRIBUTE_NOUNS = {
    "shape": "shape", "color": "colour", "size": "size", "position": "position in the image",
    "context": "relation to the other objects", "motion": "motion",
}
COLOR_WORDS: dict[str, str] = {**{c: c for c in COLORS}, "violet": "purple"}
SHAPE_WORDS: dict[str, str] = {
    **{s: s for s in SHAPES}, **{p: s for s, p in SHAPE_PLURALS.items()},
    "disc": "circle", "disk": "circle", "box": "square", "boxes": "square", "plus": "cross", "rhombus": "diamond",
}
SIZE_WORDS: dict[str, str] = {
    "small": "small", "tiny": "small", "little": "small", "medium": "medium", "medium-sized": "medium",
    "mid-sized": "medium", "large": "large", "big": "large", "huge": "large",
}
_OPPOSITE = {"leftmost": "rightmost", "rightmost": "leftmost", "topmost": "bottommost", "bottommost": "topmost"}


# --------------------------------------------------------------------------------------------- questions

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


# ---------------------------------------------------------------------------------------------- judges

class Judge(Protocol):
    """Anything that answers DLC-style questions about one caption."""

    def score(self, caption: str, questions: Sequence[Question]) -> list[Verdict]: ...


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


class ChatJudgeError(RuntimeError):
    """The chat endpoint failed or kept answering without a valid choice letter."""


_JUDGE_PROMPT = """Answer the multiple-choice question about a text description of one object in an image. Rules:
1. Do not output any reasoning and do not correct the description. Output exactly one of the choices.
2. The wording does not have to match exactly: choose the closest option based on the description.

The description is:
{caption}

From the description above, answer the following question with one of the choices:
{question}
{choices}

Output only the letter of the correct choice, nothing else."""


class ChatJudge:
    """DLC-Bench-style judge on an OpenAI-compatible chat endpoint (POST <base>/v1/chat/completions).

    base_url: e.g. "http://127.0.0.1:8000" or ".../v1"; default env DAM_JUDGE_BASE_URL, then OPENAI_BASE_URL.
    model: default env DAM_JUDGE_MODEL. api_key: default env DAM_JUDGE_API_KEY, then OPENAI_API_KEY; sent as a
    Bearer token and never logged, printed or put into an error message. timeout_s: per request (seconds).
    max_attempts: requests per question before a ChatJudgeError (an unparsable reply is retried).
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout_s: float = 60.0, max_attempts: int = 3, temperature: float = 0.0) -> None:
        base_url = base_url or os.environ.get("DAM_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        model = model or os.environ.get("DAM_JUDGE_MODEL")
        if not base_url:
            raise ValueError("ChatJudge needs a base_url (or DAM_JUDGE_BASE_URL)")
        if not model:
            raise ValueError("ChatJudge needs a model name (or DAM_JUDGE_MODEL)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        base = base_url.rstrip("/")
        self.endpoint = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self._api_key = api_key or os.environ.get("DAM_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.temperature = temperature

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return f"ChatJudge(endpoint={self.endpoint!r}, model={self.model!r}, api_key={'***' if self._api_key else None})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def prompt(self, caption: str, question: Question) -> str:
        """The user message for one question."""
        letters = "ABCDEFGH"
        choices = "\n".join(f"{letters[i]}. {text}" for i, (text, _) in enumerate(question.choices()))
        return _JUDGE_PROMPT.format(caption=caption.strip(), question=question.text, choices=choices)

    def _complete(self, content: str) -> str:
        body = json.dumps({
            "model": self.model, "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature, "max_tokens": 8,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise ChatJudgeError(self._redact(f"judge endpoint {self.endpoint} answered HTTP {exc.code}: {detail}")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ChatJudgeError(self._redact(f"judge endpoint {self.endpoint} unreachable: {exc}")) from None
        except ValueError:
            raise ChatJudgeError(f"judge endpoint {self.endpoint} answered with invalid JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise ChatJudgeError(f"judge endpoint {self.endpoint} answered without choices[0].message.content") from None

    @staticmethod
    def parse_letter(reply: str, count: int) -> int | None:
        """Index of the chosen letter in a reply like "B", "(B)", "B. The description..." or "Answer: B"."""
        valid = "ABCDEFGH"[:count]
        text = reply.strip()
        match = re.match(r"^\(?([A-H])\)?(?:[.:)\s]|$)", text) or re.search(r"\b(?:answer|choice)\s*(?:is)?\s*:?\s*\(?([A-H])\b", text, re.I)
        letter = match.group(1).upper() if match else None
        return valid.index(letter) if letter and letter in valid else None

    def score(self, caption: str, questions: Sequence[Question]) -> list[Verdict]:
        verdicts = []
        for question in questions:
            choices = question.choices()
            content = self.prompt(caption, question)
            for attempt in range(1, self.max_attempts + 1):
                reply = self._complete(content)
                index = self.parse_letter(reply, len(choices))
                if index is not None:
                    verdicts.append(Verdict(question, choices[index][1], "ABCDEFGH"[index]))
                    break
                logger.warning("judge reply without a valid letter (attempt %d/%d): %r", attempt, self.max_attempts,
                               self._redact(reply[:80]))
            else:
                raise ChatJudgeError(f"judge gave no valid choice letter after {self.max_attempts} attempts")
        return verdicts


# --------------------------------------------------------------------------------------------- scoring

@dataclass(frozen=True)
class ScoringRules:
    """Points per outcome (see the module docstring)."""

    positive_correct: float = 1.0
    positive_not_mentioned: float = 0.0
    positive_wrong: float = -1.0
    negative_not_claimed: float = 1.0
    negative_claimed: float = -1.0

    def points(self, verdict: Verdict) -> float:
        if verdict.question.kind == "positive":
            return {CORRECT: self.positive_correct, NOT_MENTIONED: self.positive_not_mentioned,
                    WRONG: self.positive_wrong}[verdict.outcome]
        return self.negative_claimed if verdict.outcome == WRONG else self.negative_not_claimed


@dataclass
class RegionScore:
    """One region's clipped scores; recognized is False when the caption named a wrong shape."""

    caption: str
    size_bucket: str
    positive: float
    negative: float
    recognized: bool
    verdicts: list[Verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "size": self.size_bucket, "positive": self.positive,
                "negative": self.negative, "recognized": self.recognized,
                "verdicts": [{"kind": v.question.kind, "attribute": v.question.attribute, "value": v.question.value,
                              "outcome": v.outcome, "answer": v.answer} for v in self.verdicts]}


@dataclass
class Report:
    """Scores in [0, 1]: positive, negative, average = (positive + negative) / 2, overall and per size bucket."""

    positive: float
    negative: float
    average: float
    by_size: dict[str, dict[str, float]]
    num_regions: int
    num_positive_questions: int
    num_negative_questions: int
    recognition_rate: float
    regions: list[RegionScore] = field(default_factory=list, repr=False)
    caption_metrics: dict[str, float] = field(default_factory=dict)

    def positive_outcomes(self) -> dict[str, dict[str, float]]:
        """Per attribute, the share of positive questions answered correct / not mentioned / wrong (before the
        recognition gate): says WHICH attribute a captioner misses, which the three scores cannot."""
        table: dict[str, dict[str, float]] = {}
        for attribute in ATTRIBUTE_NOUNS:
            outcomes = [v.outcome for r in self.regions for v in r.verdicts
                        if v.question.kind == "positive" and v.question.attribute == attribute]
            if outcomes:
                table[attribute] = {o: outcomes.count(o) / len(outcomes) for o in OUTCOMES}
        return table

    def to_dict(self, include_regions: bool = False) -> dict[str, Any]:
        result = {
            "positive": self.positive, "negative": self.negative, "average": self.average, "by_size": self.by_size,
            "num_regions": self.num_regions, "num_positive_questions": self.num_positive_questions,
            "num_negative_questions": self.num_negative_questions, "recognition_rate": self.recognition_rate,
        }
        if self.caption_metrics:
            result["caption_metrics"] = self.caption_metrics
        if self.regions:
            result["positive_outcomes"] = self.positive_outcomes()
        if include_regions:
            result["regions"] = [r.to_dict() for r in self.regions]
        return result


def _attributes_of(region: Any) -> Mapping[str, Any]:
    attributes = region if isinstance(region, Mapping) else getattr(region, "attributes", None)
    if not isinstance(attributes, Mapping):
        raise ValueError(f"a region must be an attribute dict or have .attributes, got {type(region).__name__}")
    return attributes


def score_region(caption: str, attributes: Mapping[str, Any], judge: Judge, *, key: int = 0,
                 rules: ScoringRules = ScoringRules()) -> RegionScore:
    """Ask the questions of one region and apply the gate and the clipping."""
    questions = make_questions(attributes, key=key)
    verdicts = judge.score(caption, questions)
    if len(verdicts) != len(questions):
        raise ValueError(f"judge returned {len(verdicts)} verdicts for {len(questions)} questions")
    recognized = not any(v.question.kind == "positive" and v.question.attribute == "shape" and v.outcome == WRONG
                         for v in verdicts)
    positive = [rules.points(v) for v in verdicts if v.question.kind == "positive"]
    negative = [rules.points(v) for v in verdicts if v.question.kind == "negative"]
    pos = min(1.0, max(0.0, sum(positive) / len(positive))) if recognized and positive else 0.0
    neg = min(1.0, max(0.0, sum(negative) / len(negative))) if negative else 0.0
    return RegionScore(caption, str(attributes["size"]), pos, neg, recognized, verdicts)


def _summary(regions: Sequence[RegionScore]) -> dict[str, float]:
    positive = float(np.mean([r.positive for r in regions])) if regions else 0.0
    negative = float(np.mean([r.negative for r in regions])) if regions else 0.0
    return {"positive": positive, "negative": negative, "average": (positive + negative) / 2, "regions": len(regions)}


def evaluate_captions(captions: Sequence[str], regions: Sequence[Any], judge: Judge, *,
                      rules: ScoringRules = ScoringRules(), references: Sequence[str] | None = None) -> Report:
    """Judge captions[i] against regions[i] (attribute dicts, RegionSamples or SceneObjects).

    references: optional reference captions; when given, the report also carries ``caption_metrics``.
    """
    if len(captions) != len(regions):
        raise ValueError(f"{len(captions)} captions for {len(regions)} regions")
    scored = [score_region(str(c), _attributes_of(r), judge, key=i, rules=rules)
              for i, (c, r) in enumerate(zip(captions, regions))]
    overall = _summary(scored)
    by_size = {size: _summary([r for r in scored if r.size_bucket == size]) for size in SIZES}
    by_size = {size: summary for size, summary in by_size.items() if summary["regions"]}
    report = Report(
        positive=overall["positive"], negative=overall["negative"], average=overall["average"], by_size=by_size,
        num_regions=len(scored),
        num_positive_questions=sum(v.question.kind == "positive" for r in scored for v in r.verdicts),
        num_negative_questions=sum(v.question.kind == "negative" for r in scored for v in r.verdicts),
        recognition_rate=float(np.mean([r.recognized for r in scored])) if scored else 0.0, regions=scored,
    )
    if references is not None:
        report.caption_metrics = caption_metrics(list(captions), list(references))
    return report


# ------------------------------------------------------------------------------------- caption metrics

def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; punctuation dropped (a stand-in for the PTB tokenizer)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _as_reference_lists(references: Sequence[str | Sequence[str]], count: int) -> list[list[str]]:
    if len(references) != count:
        raise ValueError(f"{count} candidates for {len(references)} reference entries")
    result = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in result):
        raise ValueError("every candidate needs at least one reference")
    return result


def bleu(candidates: Sequence[str], references: Sequence[str | Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n as pycocoevalcap computes it: clipped n-gram counts summed over the corpus,
    the "closest" reference length per sentence, and a brevity penalty exp(1 - r / c) when c < r."""
    refs_list = _as_reference_lists(references, len(candidates))
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * max_n, [0] * max_n
    test_len = ref_len = 0
    for candidate, refs in zip(candidates, refs_list):
        tokens = tokenize(candidate)
        ref_tokens = [tokenize(r) for r in refs]
        test_len += len(tokens)
        ref_len += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(tokens, n)
            max_ref: Counter[tuple[str, ...]] = Counter()
            for r in ref_tokens:
                for gram, c in _ngrams(r, n).items():
                    max_ref[gram] = max(max_ref[gram], c)
            correct[n - 1] += sum(min(c, max_ref[gram]) for gram, c in counts.items())
            guess[n - 1] += max(len(tokens) - n + 1, 0)
    scores, product = [], 1.0
    for k in range(max_n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1.0:
        scores = [s * math.exp(1.0 - 1.0 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            saved = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = saved
    return row[-1]


def rouge_l(candidates: Sequence[str], references: Sequence[str | Sequence[str]], beta: float = 1.2) -> float:
    """Mean ROUGE-L F over candidates: best precision and best recall over the references (pycocoevalcap)."""
    refs_list = _as_reference_lists(references, len(candidates))
    scores = []
    for candidate, refs in zip(candidates, refs_list):
        tokens = tokenize(candidate)
        precisions, recalls = [], []
        for reference in refs:
            ref_tokens = tokenize(reference)
            common = _lcs(ref_tokens, tokens)
            precisions.append(common / len(tokens) if tokens else 0.0)
            recalls.append(common / len(ref_tokens) if ref_tokens else 0.0)
        p, r = max(precisions), max(recalls)
        scores.append((1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p > 0 and r > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def cider_d(candidates: Sequence[str], references: Sequence[str | Sequence[str]], *, max_n: int = 4,
            sigma: float = 6.0) -> float:
    """Mean CIDEr-D (pycocoevalcap's CiderScorer): n-gram tf-idf vectors with document frequencies from the
    references of this corpus, clipped overlap min(hyp, ref) * ref, cosine per n, Gaussian penalty on the
    bigram-count difference, averaged over n and references, times 10."""
    refs_list = _as_reference_lists(references, len(candidates))
    if not candidates:
        return 0.0

    def counts(text: str) -> Counter[tuple[str, ...]]:
        tokens = tokenize(text)
        total: Counter[tuple[str, ...]] = Counter()
        for n in range(1, max_n + 1):
            total.update(_ngrams(tokens, n))
        return total

    ref_counts = [[counts(r) for r in refs] for refs in refs_list]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        document_frequency.update({gram for c in refs for gram in c})
    log_docs = math.log(float(len(candidates)))

    def vector(cnts: Counter[tuple[str, ...]]):
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(max_n)]
        norm, length = [0.0] * max_n, 0
        for gram, tf in cnts.items():
            n = len(gram) - 1
            vec[n][gram] = tf * (log_docs - math.log(max(1.0, document_frequency[gram])))
            norm[n] += vec[n][gram] ** 2
            if n == 1:  # pycocoevalcap measures length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for candidate, refs in zip(candidates, ref_counts):
        vec_h, norm_h, len_h = vector(counts(candidate))
        total = np.zeros(max_n)
        for ref in refs:
            vec_r, norm_r, len_r = vector(ref)
            delta = float(len_h - len_r)
            for n in range(max_n):
                value = sum(min(weight, vec_r[n].get(gram, 0.0)) * vec_r[n].get(gram, 0.0)
                            for gram, weight in vec_h[n].items())
                if norm_h[n] != 0 and norm_r[n] != 0:
                    value /= norm_h[n] * norm_r[n]
                total[n] += value * math.exp(-(delta ** 2) / (2 * sigma ** 2))
        scores.append(float(np.mean(total)) / len(refs) * 10.0)
    return float(np.mean(scores))


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions cost 1) between two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous_diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            saved = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, previous_diagonal + (x != y))
            previous_diagonal = saved
    return row[-1]


def edit_effort(candidate: str, reference: str, level: str = "word") -> float:
    """Normalised edit distance in [0, 1]: Levenshtein(candidate, reference) / the longer length.
    level "word" compares tokenize() words, "char" the raw strings. Two empty texts give 0."""
    if level == "word":
        a, b = tokenize(candidate), tokenize(reference)
    elif level == "char":
        a, b = list(candidate), list(reference)
    else:
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def caption_metrics(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """BLEU-4, ROUGE-L, CIDEr-D and mean edit effort (word and char; against the first reference)."""
    refs_list = _as_reference_lists(references, len(candidates))
    if not candidates:
        return {"bleu4": 0.0, "rouge_l": 0.0, "cider_d": 0.0, "edit_effort_word": 0.0, "edit_effort_char": 0.0}
    return {
        "bleu4": bleu(candidates, refs_list)[3],
        "rouge_l": rouge_l(candidates, refs_list),
        "cider_d": cider_d(candidates, refs_list),
        "edit_effort_word": float(np.mean([edit_effort(c, r[0], "word") for c, r in zip(candidates, refs_list)])),
        "edit_effort_char": float(np.mean([edit_effort(c, r[0], "char") for c, r in zip(candidates, refs_list)])),
    }


# ------------------------------------------------------------------------- `python -m dam_model evaluate`

def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m dam_model evaluate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="DAM folder to caption the held-out scenes with")
    source.add_argument("--captions", help="JSONL of captions made elsewhere: {caption, attributes} or "
                                           "{caption, seed, index, object_id} per line")
    parser.add_argument("--seed", type=int, default=1_000_003, help="seed of the held-out synthetic scenes")
    parser.add_argument("--n", type=int, default=50, help="number of held-out scenes")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of every scene (default: drawn per scene)")
    parser.add_argument("--reference", choices=("long", "short"), default="long",
                        help="reference captions for the BLEU/ROUGE/CIDEr/edit metrics")
    parser.add_argument("--judge", choices=("rule", "chat"), default="rule")
    parser.add_argument("--judge-base-url", default=None, help="OpenAI-compatible server (or env DAM_JUDGE_BASE_URL)")
    parser.add_argument("--judge-model", default=None, help="judge model name (or env DAM_JUDGE_MODEL)")
    parser.add_argument("--judge-api-key-env", default="DAM_JUDGE_API_KEY",
                        help="NAME of the environment variable holding the judge's API key (keys stay off argv)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="scenes per describe_batch call")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="caption length limit in tokens")
    parser.add_argument("--save-captions", default=None, help="write the model's captions here as JSONL")
    parser.add_argument("--regions", action="store_true", help="include per-region verdicts in the JSON")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+)[x,](\d+)", text.strip())
    if not match:
        raise ValueError(f"--size must look like 96x64, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _caption_text(caption: Any) -> str:
    return caption if isinstance(caption, str) else str(getattr(caption, "text"))


def _model_captions(args: argparse.Namespace, scenes: list[Any]) -> list[str]:
    import torch  # heavy: only when a model is evaluated

    from dam_model.modeling import DescribeAnythingModel

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = DescribeAnythingModel.from_pretrained(args.model, device=args.device)
    captions: list[str] = []
    for start in range(0, len(scenes), max(1, args.batch_size)):
        chunk = scenes[start:start + max(1, args.batch_size)]
        outputs = model.describe_batch([(s.image, [o.mask for o in s.objects]) for s in chunk],
                                       max_new_tokens=args.max_new_tokens)
        for scene, per_scene in zip(chunk, outputs):
            if len(per_scene) != len(scene.objects):
                raise RuntimeError(f"describe_batch gave {len(per_scene)} captions for {len(scene.objects)} masks")
            captions += [_caption_text(c) for c in per_scene]
    return captions


def _read_caption_file(path: str, size: tuple[int, int] | None) -> tuple[list[str], list[Mapping[str, Any]], list[str]]:
    from dam_model.synthetic import generate_scene

    captions, regions, references = [], [], []
    cache: dict[tuple[int, int], Any] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "caption" not in record:
                raise ValueError(f"{path}:{number}: no 'caption'")
            if "attributes" in record:
                attributes = record["attributes"]
                reference = record.get("reference", "")
            elif {"seed", "index", "object_id"} <= set(record):
                key = (int(record["seed"]), int(record["index"]))
                if key not in cache:
                    cache[key] = generate_scene(*key, size=size)
                obj = cache[key].objects[int(record["object_id"])]
                attributes, reference = obj.attributes, record.get("reference", obj.long_caption)
            else:
                raise ValueError(f"{path}:{number}: needs 'attributes' or 'seed', 'index' and 'object_id'")
            captions.append(str(record["caption"]))
            regions.append(attributes)
            references.append(reference)
    return captions, regions, references


def run_evaluate(args: argparse.Namespace) -> int:
    """Caption held-out synthetic scenes with a model (or read captions) and print the DLC-style report."""
    from dam_model.synthetic import generate_dataset

    size = _parse_size(args.size)
    if args.judge == "chat":
        judge: Judge = ChatJudge(args.judge_base_url, args.judge_model, os.environ.get(args.judge_api_key_env))
    else:
        judge = RuleJudge()
    if args.captions:
        captions, regions, references = _read_caption_file(args.captions, size)
        if not all(references):
            references = None  # type: ignore[assignment]
    else:
        if args.n < 1:
            raise ValueError("--n must be >= 1")
        scenes = generate_dataset(args.seed, args.n, size=size)
        objects = [(s, o) for s in scenes for o in s.objects]
        captions = _model_captions(args, scenes)
        regions = [o.attributes for _, o in objects]
        references = [o.long_caption if args.reference == "long" else o.short_caption for _, o in objects]
        if args.save_captions:
            _write_jsonl(args.save_captions, [
                {"seed": s.seed, "index": s.index, "object_id": o.object_id, "caption": c,
                 "reference": r} for (s, o), c, r in zip(objects, captions, references)])
    report = evaluate_captions(captions, regions, judge, references=references)
    if args.json:
        print(json.dumps(report.to_dict(include_regions=args.regions), indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0


def _write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(temporary, path)


def format_report(report: Report) -> str:
    """A few human-readable lines."""
    lines = [f"DLC-style (reference-free) over {report.num_regions} regions "
             f"({report.num_positive_questions} positive / {report.num_negative_questions} negative questions):",
             f"  positive {report.positive:.3f}  negative {report.negative:.3f}  average {report.average:.3f}  "
             f"recognized {report.recognition_rate:.3f}"]
    for size, summary in report.by_size.items():
        lines.append(f"  {size:<7} positive {summary['positive']:.3f}  negative {summary['negative']:.3f}  "
                     f"average {summary['average']:.3f}  ({summary['regions']} regions)")
    if report.caption_metrics:
        lines.append("  " + "  ".join(f"{k} {v:.3f}" for k, v in report.caption_metrics.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (the package's ``python -m dam_model evaluate`` calls run_evaluate)."""
    parser = argparse.ArgumentParser(prog="dam_model evaluate", description=run_evaluate.__doc__)
    add_evaluate_arguments(parser)
    return run_evaluate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
