"""Caption metrics on hand-computed cases."""
from __future__ import annotations

import math

import pytest

from dam_model.evaluation import bleu, caption_metrics, cider_d, edit_effort, levenshtein, rouge_l

REF = "a small red circle in the top right"


def test_bleu_identical_disjoint_and_partial():
    assert bleu([REF], [REF])[3] == pytest.approx(1.0, abs=1e-9)
    assert bleu(["blue square"], ["red circle"])[3] < 1e-6
    # n-gram precisions 7/8, 6/7, 5/6, 4/5 -> (1/2) ** (1/4)
    assert bleu(["a small red circle in the top left"], [REF])[3] == pytest.approx(0.5 ** 0.25, rel=1e-9)
    # BLEU-2 of a classic: p1 = 5/6, p2 = 3/5
    assert bleu(["the cat sat on the mat"], ["the cat is on the mat"])[1] == pytest.approx(math.sqrt(0.5), rel=1e-9)


def test_bleu_brevity_penalty_and_closest_reference():
    # all n-gram precisions 1, c = 4, r = 8 -> exp(1 - 2)
    assert bleu(["a small red circle"], [REF])[3] == pytest.approx(math.exp(-1.0), rel=1e-6)
    # the closest reference (length 4) removes the penalty
    assert bleu(["a small red circle"], [[REF, "a small red circle"]])[3] == pytest.approx(1.0, abs=1e-9)


def test_rouge_l():
    assert rouge_l([REF], [REF]) == pytest.approx(1.0)
    assert rouge_l(["blue square"], ["red circle"]) == 0.0
    assert rouge_l(["a small red circle in the top left"], [REF]) == pytest.approx(7 / 8)
    # P = 1, R = 1/2: (1 + 1.44) * 0.5 / (0.5 + 1.44)
    assert rouge_l(["a small red circle"], [REF]) == pytest.approx(2.44 * 0.5 / 1.94)


def test_cider_d_hand_computed():
    # two images with disjoint vocabularies: every reference n-gram has df 1, weight log 2
    identical = ["a small red circle in the top right", "one big blue star at the bottom"]
    assert cider_d(identical, identical) == pytest.approx(10.0)
    # image 1: unigram cosine 1/2, bigram 0 -> 10 * 0.5 / 4 = 1.25; image 2: uni 1, bi 1 -> 5.0
    assert cider_d(["a b", "d e"], ["a c", "d e"]) == pytest.approx((1.25 + 5.0) / 2)
    assert cider_d(["x y z"], ["x y z"]) == 0.0  # one image: idf log(1) = 0, as pycocoevalcap
    # length penalty: 1 extra bigram -> exp(-1 / 72) on every n
    shorter = cider_d(["p q r s t", "k l m n"], ["p q r s t u", "k l m n"])
    assert 0.0 < shorter < 10.0


def test_edit_effort():
    assert levenshtein("kitten", "sitting") == 3
    assert edit_effort("kitten", "sitting", level="char") == pytest.approx(3 / 7)
    assert edit_effort("a small red circle", "a small blue circle") == pytest.approx(1 / 4)
    assert edit_effort(REF, REF) == 0.0 and edit_effort("", "") == 0.0
    assert edit_effort("blue square", "red circle") == 1.0
    with pytest.raises(ValueError):
        edit_effort("a", "b", level="byte")


def test_caption_metrics_bundle():
    metrics = caption_metrics([REF, "blue square"], [REF, "red circle"])
    assert set(metrics) == {"bleu4", "rouge_l", "cider_d", "edit_effort_word", "edit_effort_char"}
    assert metrics["rouge_l"] == pytest.approx(0.5) and metrics["edit_effort_word"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        caption_metrics([REF], [])
