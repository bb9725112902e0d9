"""DLC-style scoring: points per verdict, the recognition gate and clipping per region, the report overall and
per size bucket (see dam_model.evaluation for the rules)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from dam_model.synthetic import SIZES

from .metrics import caption_metrics
from .questions import ATTRIBUTE_NOUNS, CORRECT, NOT_MENTIONED, OUTCOMES, WRONG, Judge, Verdict, make_questions


@dataclass(frozen=True)
class ScoringRules:
    """Points per outcome (the rules are in dam_model.evaluation's docstring)."""

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
