"""The promotion gate (dam_loop.gate) on the small-data case of issue 18, with seeded simulated rounds.

Per-region scores are simulated the way the DLC-style judge produces them: a region's score is the share of its
~12 questions answered right, in [0, 1] and discrete; a region's difficulty is shared by both models (so the pairs
are correlated, as in the real loop), and a share of regions gets the same caption from both models (same score).
Every number comes from fixed seeds, so each test is deterministic.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math

import numpy as np
import pytest

from dam_loop.gate import (
    GateSettings,
    bca_interval,
    decide,
    dlc_region_scores,
    paired_scores,
    student_t_quantile,
)

QUESTIONS_PER_REGION = 12  # 5 positive + ~7 negative DLC-style questions per image region
REGION_DIFFICULTY_SD = 1.2  # logit spread of region difficulty: per-region scores spread over most of [0, 1]
SAME_CAPTION_SHARE = 0.3  # regions where a retrained model writes the champion's caption again
PROJECT_BEFORE, PROJECT_AFTER, PROJECT_REGIONS = 0.544, 0.615, 141  # the improvement issue 18 measured


def expected_score(logit: float) -> float:
    """Mean region score of a model whose per-question logit is `logit` on an average region."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    return float(np.sum(weights / weights.sum() / (1 + np.exp(-(logit + REGION_DIFFICULTY_SD * nodes)))))


@functools.lru_cache(maxsize=None)
def logit_for(mean: float) -> float:
    low, high = -10.0, 10.0
    for _ in range(80):  # bisection: expected_score is increasing
        middle = (low + high) / 2
        low, high = (middle, high) if expected_score(middle) < mean else (low, middle)
    return (low + high) / 2


def simulate_round(seed: int, n: int, champion_mean: float, candidate_mean: float) -> tuple[dict, dict]:
    """{region id: score} of champion and candidate on the same n regions, with the given expected means."""
    rng = np.random.default_rng(seed)
    # Unchanged regions dilute the change: the changed ones carry all of it.
    changed_mean = champion_mean + (candidate_mean - champion_mean) / (1 - SAME_CAPTION_SHARE)
    difficulty = rng.normal(0.0, REGION_DIFFICULTY_SD, n)
    champion = rng.binomial(QUESTIONS_PER_REGION, 1 / (1 + np.exp(-(logit_for(champion_mean) + difficulty))))
    candidate = rng.binomial(QUESTIONS_PER_REGION, 1 / (1 + np.exp(-(logit_for(changed_mean) + difficulty))))
    same_caption = rng.random(n) < SAME_CAPTION_SHARE
    candidate = np.where(same_caption, champion, candidate)
    ids = [f"region-{seed}-{i}" for i in range(n)]
    return ({i: c / QUESTIONS_PER_REGION for i, c in zip(ids, champion)},
            {i: c / QUESTIONS_PER_REGION for i, c in zip(ids, candidate)})


def old_gate_promotes(champion: dict, candidate: dict, margin: float = 0.0) -> bool:
    """Today's rule in scripts/promote.py: candidate average > champion average + margin."""
    return float(np.mean(list(candidate.values()))) > float(np.mean(list(champion.values()))) + margin


# ----------------------------------------------------------------------------------------------- the small-data case
def test_simulation_is_realistic():
    champion, candidate = simulate_round(1, 20_000, PROJECT_BEFORE, PROJECT_AFTER)
    before, after = np.array(list(champion.values())), np.array(list(candidate.values()))
    assert before.mean() == pytest.approx(PROJECT_BEFORE, abs=0.01)
    assert after.mean() == pytest.approx(PROJECT_AFTER, abs=0.01)
    assert 0.0 <= before.min() and before.max() <= 1.0
    assert 0.15 < before.std() < 0.35  # regions differ a lot: the spread that made two averages unreliable
    assert np.corrcoef(before, after)[0, 1] > 0.5  # pairs are correlated: the same region is hard for both


def test_no_better_candidate_is_promoted_at_most_once_in_20_rounds(capsys):
    promoted = old_promoted = 0
    for round_index in range(20):
        n = int(np.random.default_rng(1000 + round_index).integers(40, 101))
        champion, candidate = simulate_round(2000 + round_index, n, PROJECT_BEFORE, PROJECT_BEFORE)
        promoted += decide(champion, candidate).promote
        old_promoted += old_gate_promotes(champion, candidate)
    with capsys.disabled():
        print(f"\nno-better candidate, 20 rounds, n=40..100: gate promoted {promoted}, old gate {old_promoted}")
    assert old_promoted >= 5  # the small-data case is reproduced: the old gate passes on noise
    assert promoted <= 1


def test_slightly_worse_candidate_is_never_promoted():
    promoted = sum(decide(*simulate_round(3000 + r, 60, PROJECT_BEFORE, PROJECT_BEFORE - 0.02)).promote
                   for r in range(20))
    assert promoted == 0


def test_the_same_scores_are_never_promoted():
    for round_index in range(20):
        champion, _ = simulate_round(4000 + round_index, 40 + 3 * round_index, PROJECT_BEFORE, PROJECT_BEFORE)
        decision = decide(champion, dict(champion))
        assert not decision.promote
        assert decision.outcome == "not_better"
        assert decision.mean_diff == decision.ci_low == decision.ci_high == 0.0


def test_a_clearly_better_candidate_is_promoted(capsys):
    champion, candidate = simulate_round(5000, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)
    decision = decide(champion, candidate)
    assert decision.promote, decision.reason
    assert decision.outcome == "promoted"
    assert decision.n == PROJECT_REGIONS
    assert decision.ci_low > 0 and decision.ci_low < decision.mean_diff < decision.ci_high
    powered = sum(decide(*simulate_round(6000 + r, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)).promote
                  for r in range(20))
    with capsys.disabled():
        print(f"\nclearly better candidate (0.544 -> 0.615, n=141): promoted in {powered} of 20 rounds; "
              f"first: {decision.reason}")
    assert powered >= 18


def test_too_few_regions_trains_but_does_not_promote():
    champion, candidate = simulate_round(7000, 20, PROJECT_BEFORE, 0.9)
    decision = decide(champion, candidate, settings=GateSettings(min_val_regions=30))
    assert not decision.promote
    assert decision.outcome == "too_few_regions"
    assert "20 validation regions < min_val_regions 30" in decision.reason
    assert decision.ci_low is not None  # the interval is still reported


def test_a_regression_beyond_the_margin_is_refused():
    champion, candidate = simulate_round(8000, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)
    old_champion, old_candidate = simulate_round(8001, 300, 0.7, 0.64)  # forgot earlier categories
    decision = decide(champion, candidate, regression_champion=old_champion, regression_candidate=old_candidate)
    assert not decision.promote
    assert decision.outcome == "regression"
    assert decision.regression.checked and not decision.regression.passed
    assert decision.regression.comparison.mean_diff < -GateSettings().regression_margin
    assert "regressed on the regression set" in decision.reason


def test_an_unchanged_regression_set_lets_a_better_candidate_through():
    champion, candidate = simulate_round(8000, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)
    old_champion, _ = simulate_round(8002, 300, 0.7, 0.7)
    decision = decide(champion, candidate, regression_champion=old_champion, regression_candidate=dict(old_champion))
    assert decision.promote, decision.reason
    assert decision.regression.passed


def test_a_noisy_regression_set_that_cannot_rule_out_forgetting_is_refused():
    champion, candidate = simulate_round(8000, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)
    old_champion, old_candidate = simulate_round(8003, 40, 0.7, 0.69)
    decision = decide(champion, candidate, regression_champion=old_champion, regression_candidate=old_candidate)
    assert decision.outcome == "regression"
    assert "cannot rule out a regression" in decision.reason


def test_a_tiny_regression_set_is_refused():
    champion, candidate = simulate_round(8000, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)
    old_champion, old_candidate = simulate_round(8004, 12, 0.7, 0.7)
    decision = decide(champion, candidate, regression_champion=old_champion, regression_candidate=old_candidate)
    assert decision.outcome == "regression_set_too_small"
    assert not decision.promote


# ----------------------------------------------------------------------------------------------- mechanics
def test_decision_is_deterministic_and_json_ready():
    champion, candidate = simulate_round(9000, 80, PROJECT_BEFORE, PROJECT_AFTER)
    reordered = dict(reversed(list(candidate.items())))  # dict order must not matter
    first, second = decide(champion, candidate).to_dict(), decide(champion, reordered).to_dict()
    assert first == second
    record = json.loads(json.dumps(first, allow_nan=False))
    assert set(record) >= {"promote", "reason", "n", "mean_diff", "ci_low", "ci_high", "confidence", "margin",
                           "regression", "method", "outcome"}
    assert record["regression"] == {"checked": False, "passed": True, "margin": 0.03, "n": 0,
                                    "reason": "no regression set given: not checked"}
    assert "\n" not in record["reason"]


def test_the_margin_applies_to_the_lower_bound():
    champion, candidate = simulate_round(5000, PROJECT_REGIONS, PROJECT_BEFORE, PROJECT_AFTER)
    decision = decide(champion, candidate)
    above = decide(champion, candidate, settings=GateSettings(margin=decision.ci_low + 0.001))
    assert decision.promote and not above.promote and above.outcome == "not_better"


def test_unpaired_or_broken_scores_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        paired_scores({"a": 0.5, "b": 0.5}, {"a": 0.5, "c": 0.5})
    with pytest.raises(ValueError, match="finite"):
        paired_scores({"a": math.nan}, {"a": 0.5})
    with pytest.raises(ValueError, match="both"):
        decide({"a": 0.5}, {"a": 0.5}, regression_champion={"a": 0.5})


@pytest.mark.parametrize("field, value", [("min_val_regions", 5), ("margin", -0.01), ("confidence", 1.0),
                                          ("n_resamples", 50), ("regression_margin", math.inf), ("replay_ratio", 1.0)])
def test_settings_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        GateSettings(**{field: value})


def test_every_setting_has_a_field_doc():
    """Flags and the README table can be generated from the docstrings under the fields (as for TrainConfig)."""
    body = ast.parse(inspect.getsource(GateSettings)).body[0].body
    documented = {node.target.id for node, after in zip(body, body[1:])
                  if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)}
    assert documented == {f.name for f in dataclasses.fields(GateSettings)}


def test_student_t_quantile_matches_tables():
    assert student_t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-3)
    assert student_t_quantile(0.975, 39) == pytest.approx(2.0227, abs=1e-4)
    assert student_t_quantile(0.025, 140) == pytest.approx(-1.9771, abs=1e-4)


def test_interval_of_a_shifted_sample_is_shifted():
    differences = np.random.default_rng(0).normal(0.0, 0.2, 100)
    low, high = bca_interval(differences, 0.95, 2000, 0)
    shifted_low, shifted_high = bca_interval(differences + 0.5, 0.95, 2000, 0)
    assert (shifted_low, shifted_high) == pytest.approx((low + 0.5, high + 0.5))
    assert low < differences.mean() < high
    assert high - low == pytest.approx(2 * 2.0 * 0.2 / 10, rel=0.15)  # about +-2 standard errors


def test_dlc_region_scores_match_the_evaluate_steps_average():
    per_sample = [{"id": "a", "candidate": {"dlc": {"positive": 1.0, "negative": 0.5}}},
                  {"id": "b", "candidate": {"dlc": {"positive": 0.0, "negative": 1.0}}},
                  {"id": "c", "candidate": {"edit_effort": 0.3}}]  # no attributes: not judged
    scores = dlc_region_scores(per_sample, "candidate")
    assert scores == {"a": 0.75, "b": 0.5}
    dlc_average = (np.mean([1.0, 0.0]) + np.mean([0.5, 1.0])) / 2
    assert np.mean(list(scores.values())) == pytest.approx(dlc_average)
