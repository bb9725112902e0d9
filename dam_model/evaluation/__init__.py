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

Scoring rules (scoring.py, ``ScoringRules``; the defaults are this project's reading of DLC-Bench):
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

Two judges share one interface, ``Judge.score(caption, questions) -> list[Verdict]`` (questions.py):
- ``RuleJudge`` (rule_judge.py) parses the small caption grammar of ``dam_model.synthetic`` (with a few synonyms,
  listed in ``COLOR_WORDS``, ``SHAPE_WORDS`` and ``SIZE_WORDS``); exact on synthetic data;
- ``ChatJudge`` (chat_judge.py) asks an OpenAI-compatible ``/v1/chat/completions`` endpoint (e.g. vLLM) one
  multiple-choice question at a time, DLC-Bench style, and reads the choice letter. Only urllib is used (no requests).

Caption metrics (metrics.py; reference-based, for the nightly evaluate step) follow pycocoevalcap's formulas on a
simple lower-case word tokenisation: corpus BLEU-1..4 ("closest" reference length, brevity penalty), ROUGE-L
(F-measure with beta 1.2, best reference), CIDEr-D (tf-idf over 1..4-grams from the references, clipped counts,
Gaussian length penalty with sigma 6, x10), and the edit effort (Levenshtein distance / longer length, by words
and by characters).

Modules: questions (questions, verdicts, the Judge interface), rule_judge, chat_judge, scoring (rules, per-region
scores, the report), metrics, captioning (a model's captions of held-out scenes, caption files), cli
(``python -m dam_model evaluate``).
"""
from __future__ import annotations

from .captioning import caption_scenes, caption_text, read_caption_file
from .chat_judge import ChatJudge, ChatJudgeError
from .cli import add_evaluate_arguments, main, parse_size, run_evaluate
from .metrics import bleu, caption_metrics, cider_d, edit_effort, levenshtein, rouge_l, tokenize
from .questions import (
    ATTRIBUTE_NOUNS, CORRECT, NOT_MENTIONED, OUTCOMES, WRONG, Judge, Question, Verdict, make_questions,
)
from .rule_judge import COLOR_WORDS, SHAPE_WORDS, SIZE_WORDS, ParsedCaption, RuleJudge, parse_caption
from .scoring import RegionScore, Report, ScoringRules, evaluate_captions, format_report, score_region

__all__ = [
    "ATTRIBUTE_NOUNS", "COLOR_WORDS", "CORRECT", "ChatJudge", "ChatJudgeError", "Judge", "NOT_MENTIONED", "OUTCOMES",
    "ParsedCaption", "Question", "RegionScore", "Report", "RuleJudge", "SHAPE_WORDS", "SIZE_WORDS", "ScoringRules",
    "Verdict", "WRONG", "add_evaluate_arguments", "bleu", "caption_metrics", "caption_scenes", "caption_text",
    "cider_d", "edit_effort", "evaluate_captions", "format_report", "levenshtein", "main", "make_questions",
    "parse_caption", "parse_size", "read_caption_file", "rouge_l", "run_evaluate", "score_region", "tokenize",
]
