"""The rule judge and the DLC-style scoring on hand-written captions."""
from __future__ import annotations

import json

import pytest

from dam_model.evaluation import (
    CORRECT, NOT_MENTIONED, WRONG, Question, RuleJudge, ScoringRules, evaluate_captions, make_questions,
    parse_caption, score_region,
)
from dam_model.synthetic import generate_video, iter_region_samples, iter_video_region_samples

RED_CIRCLE = {
    "color": "red", "shape": "circle", "size": "small", "position": "top left",
    "context": "the leftmost of two red circles",
    "context_relation": {"relation": "leftmost", "color": "red", "shape": "circle"},
}


def _outcomes(caption, attributes=RED_CIRCLE):
    verdicts = RuleJudge().score(caption, make_questions(attributes))
    return {(v.question.kind, v.question.attribute, v.question.value): v.outcome for v in verdicts}


def test_questions_cover_present_and_absent_attributes():
    questions = make_questions(RED_CIRCLE)
    positive = [q for q in questions if q.kind == "positive"]
    negative = [q for q in questions if q.kind == "negative"]
    assert [q.attribute for q in positive] == ["shape", "color", "size", "position", "context"]
    assert all(q.value != RED_CIRCLE[q.attribute] for q in negative if q.attribute != "context")
    (context_negative,) = [q for q in negative if q.attribute == "context"]
    assert json.loads(context_negative.value)["relation"] == "rightmost"
    assert make_questions(RED_CIRCLE, key=3) == make_questions(RED_CIRCLE, key=3)


def test_the_reference_caption_scores_full_marks():
    caption = "A small red circle in the top left of the image. It is the leftmost of two red circles."
    region = score_region(caption, RED_CIRCLE, RuleJudge())
    assert (region.positive, region.negative, region.recognized) == (1.0, 1.0, True)


def test_omitted_attributes_score_zero_not_a_penalty():
    outcomes = _outcomes("a red circle")
    assert outcomes[("positive", "color", "red")] == CORRECT
    assert outcomes[("positive", "size", "small")] == NOT_MENTIONED
    assert outcomes[("positive", "position", "top left")] == NOT_MENTIONED
    region = score_region("a red circle", RED_CIRCLE, RuleJudge())
    assert region.positive == pytest.approx(2 / 5) and region.negative == 1.0


def test_a_hallucinated_attribute_is_penalised_on_both_sides():
    questions = make_questions(RED_CIRCLE)
    absent_color = next(q.value for q in questions if q.kind == "negative" and q.attribute == "color")
    caption = f"A small {absent_color} circle in the top left of the image."
    outcomes = _outcomes(caption)
    assert outcomes[("positive", "color", "red")] == WRONG
    assert outcomes[("negative", "color", absent_color)] == WRONG
    region = score_region(caption, RED_CIRCLE, RuleJudge())
    # positive: shape +1, colour -1, size +1, position +1, context 0 -> 2 / 5
    assert region.positive == pytest.approx(2 / 5)
    # negative: one of the 7 negative questions claimed: (6 - 1) / 7
    assert region.negative == pytest.approx(5 / 7)


def test_a_wrong_shape_hits_the_recognition_gate():
    caption = "A small red square in the top left of the image."
    region = score_region(caption, RED_CIRCLE, RuleJudge())
    assert not region.recognized and region.positive == 0.0  # colour, size, position were right but count 0
    assert 0.0 < region.negative < 1.0  # negatives still count (and "square" may be one of them)
    unnamed = score_region("A small red thing in the top left of the image.", RED_CIRCLE, RuleJudge())
    assert unnamed.recognized and unnamed.positive == pytest.approx(3 / 5)


def test_context_phrases_do_not_leak_into_the_subject():
    parsed = parse_caption("A medium red star in the center of the image. It is next to an orange square.")
    assert parsed.colors == {"red"} and parsed.shapes == {"star"} and parsed.positions == {"center"}
    assert parsed.contexts == [{"relation": "next_to", "color": "orange", "shape": "square"}]
    wrong_context = _outcomes("A small red circle in the top left of the image. It is the rightmost of two red circles.")
    assert wrong_context[("positive", "context", json.dumps(RED_CIRCLE["context_relation"], sort_keys=True))] == WRONG


def test_synonyms_are_only_the_declared_ones():
    parsed = parse_caption("a tiny violet box in the upper-left corner")
    assert (parsed.sizes, parsed.colors, parsed.shapes, parsed.positions) == ({"small"}, {"purple"}, {"square"}, {"top left"})
    assert parse_caption("a crimson blob").colors == set() and parse_caption("a crimson blob").shapes == set()


def test_scores_are_clipped_per_region():
    caption = "A large blue square in the bottom right of the image. It is the rightmost of two red circles."
    region = score_region(caption, RED_CIRCLE, RuleJudge(), rules=ScoringRules())
    assert region.positive == 0.0 and 0.0 <= region.negative <= 1.0
    lenient = score_region("A small blue circle.", RED_CIRCLE, RuleJudge(), rules=ScoringRules(positive_wrong=0.0))
    assert lenient.positive == pytest.approx(2 / 5)


def test_report_by_size_and_overall(small_scenes):
    samples = list(iter_region_samples(small_scenes))
    perfect = evaluate_captions([s.caption for s in samples], samples, RuleJudge())
    assert (perfect.positive, perfect.negative, perfect.average) == (1.0, 1.0, 1.0)
    short = evaluate_captions([o.short_caption for s in small_scenes for o in s.objects], samples, RuleJudge())
    assert short.positive == pytest.approx(3 / 5) and short.negative == 1.0 and short.average == pytest.approx(0.8)
    wrong = evaluate_captions(["a large green star"] * len(samples), samples, RuleJudge())
    assert wrong.positive < 0.2 and wrong.average < short.average
    report = wrong.to_dict()
    assert set(report["by_size"]) <= {"small", "medium", "large"}
    assert sum(v["regions"] for v in report["by_size"].values()) == len(samples) == report["num_regions"]
    with pytest.raises(ValueError):
        evaluate_captions(["x"], samples, RuleJudge())


def test_video_motion_is_judged():
    samples = list(iter_video_region_samples([generate_video(1, i) for i in range(3)]))
    report = evaluate_captions([s.caption for s in samples], samples, RuleJudge())
    assert report.positive == 1.0 and report.negative == 1.0
    still = [s.caption.replace(s.attributes["motion"], "staying still") for s in samples]
    moving = [s for s in samples if s.attributes["motion"] != "staying still"]
    if moving:  # this seed has moving objects: a motion error must cost points
        assert evaluate_captions(still, samples, RuleJudge()).positive < 1.0


def test_question_choices_are_dlc_style():
    question = Question("positive", "color", "red")
    assert [outcome for _, outcome in question.choices()] == [CORRECT, NOT_MENTIONED, WRONG]
    assert Question("negative", "shape", "star").text == "Does the description say that the object is a star?"


def test_positive_outcomes_name_the_missed_attribute():
    caption = "A small blue circle in the top left of the image."  # right shape/size/position, wrong colour, no context
    report = evaluate_captions([caption], [RED_CIRCLE], RuleJudge()).to_dict()
    outcomes = report["positive_outcomes"]
    assert outcomes["shape"][CORRECT] == outcomes["size"][CORRECT] == outcomes["position"][CORRECT] == 1.0
    assert outcomes["color"][WRONG] == 1.0 and outcomes["context"][NOT_MENTIONED] == 1.0
    assert "motion" not in outcomes
