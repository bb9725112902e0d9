"""Prompt augmentation: every template is used, captions match the prompt's intent, counts are true."""
import random
import re

import pytest

from dam_model.augment import (
    DEFAULT_QUERY,
    PROMPT_TEMPLATES,
    augment_prompt,
    count_sentences,
    count_words,
    example_rng,
    prompt_vocabulary_texts,
)

LONG = "A small red ball with a glossy surface. It rests on the left side of the image. Nothing touches it."
SHORT = "red ball"


def _draw(n=600, fraction=0.5, seed=0, short=SHORT):
    rng = random.Random(seed)
    return [augment_prompt(LONG, short, rng, fraction) for _ in range(n)]


def test_fifteen_templates_all_appear_and_kinds_covered():
    assert len(PROMPT_TEMPLATES) == 15
    seen = {ex.template_index for ex in _draw(fraction=0.0)}
    assert seen == set(range(15))
    assert {t.kind for t in PROMPT_TEMPLATES} == {"detail", "brief", "words", "sentences"}


def test_caption_matches_prompt_kind_and_counts_are_true():
    for ex in _draw(fraction=0.0):
        template = PROMPT_TEMPLATES[ex.template_index]
        if template.kind == "detail":
            assert ex.answer == LONG
        elif template.kind == "brief":
            assert ex.answer == SHORT
        elif template.kind == "words":
            stated = int(re.search(r"(\d+)", ex.query).group(1))
            assert stated == len(ex.answer.split())
        else:
            stated = int(re.search(r"(\d+)", ex.query).group(1))
            assert stated == count_sentences(ex.answer)
            assert ("sentence " in ex.query or "sentence." in ex.query or "sentence," in ex.query) == (stated == 1)


def test_count_conditioned_prompt_states_long_caption_counts():
    counts = {m for ex in _draw(fraction=0.0) for m in re.findall(r"\d+", ex.query)}
    assert str(count_words(LONG)) in counts and str(count_words(SHORT)) in counts
    assert "3" in counts  # LONG has three sentences


def test_default_fraction_is_respected_and_deterministic():
    draws = _draw(n=2000, fraction=0.5)
    share = sum(ex.query == DEFAULT_QUERY and ex.answer == LONG for ex in draws) / len(draws)
    assert 0.5 <= share <= 0.6  # 50% forced + 1/15 of the rest picks the default template itself
    assert all(ex.query == DEFAULT_QUERY and ex.answer == LONG for ex in _draw(n=50, fraction=1.0))
    assert _draw(seed=3) == _draw(seed=3)
    assert _draw(seed=3) != _draw(seed=4)
    assert augment_prompt(LONG, SHORT, example_rng(1, 2, 3)) == augment_prompt(LONG, SHORT, example_rng(1, 2, 3))


def test_without_short_caption_no_brief_prompt():
    draws = _draw(fraction=0.0, short=None)
    assert all(PROMPT_TEMPLATES[ex.template_index].kind != "brief" for ex in draws)
    assert all(ex.answer == LONG for ex in draws)


def test_counting_helpers_and_errors():
    assert count_words("a  b\tc") == 3
    assert count_sentences("One. Two! Three?") == 3
    assert count_sentences("Pi is 3.14 here. Next") == 2
    assert count_sentences("") == 0
    with pytest.raises(ValueError):
        augment_prompt("  ", SHORT, random.Random(0))
    with pytest.raises(ValueError):
        augment_prompt(LONG, SHORT, random.Random(0), default_fraction=1.5)


def test_vocabulary_texts_cover_rendered_queries():
    vocab = set(prompt_vocabulary_texts())
    for ex in _draw(fraction=0.0):
        assert ex.query in vocab
