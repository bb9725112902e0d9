"""Continuous batching (dam_model/continuous.py): rows that join a running decode at any step, with other prompts
(other lengths: padding between rows), leave at </s> or max_new_tokens, or are dropped, decode exactly as alone."""
from __future__ import annotations

import random

import pytest
import torch

from dam_model.continuous import PreparedRegion, prepared_rows
from dam_model.synthetic import generate_dataset, iter_region_samples

BRIEF = "<image>\nDescribe the masked region briefly."


@pytest.fixture(scope="module")
def regions():
    return [(s.image, s.mask) for s in list(iter_region_samples(generate_dataset(seed=23, n=8)))[:12]]


def query_of(i: int, trained_dam) -> str | None:
    return [None, BRIEF, trained_dam.config.image_query.replace("the masked region", "the masked region (a red cat)")][i % 3]


@pytest.mark.parametrize("max_new_tokens", [40, 6])
def test_rows_joining_at_random_steps_decode_as_alone(trained_dam, regions, max_new_tokens):
    alone = [trained_dam.describe(image, [mask], query=query_of(i, trained_dam), max_new_tokens=max_new_tokens)[0]
             for i, (image, mask) in enumerate(regions)]
    session = trained_dam.caption_session(max_new_tokens)
    rng = random.Random(max_new_tokens)
    waiting, got, widths = list(range(len(regions))), {}, []
    while waiting or session.rows:
        joining = waiting[: rng.randint(0, 3)]
        waiting = waiting[len(joining):]
        if joining:
            got.update(session.admit([(*regions[i], query_of(i, trained_dam)) for i in joining], joining))
        got.update(session.step())
        widths.append(session.decoder.width)
    assert [got[i].token_ids for i in range(len(regions))] == [c.token_ids for c in alone]
    assert [got[i].text for i in range(len(regions))] == [c.text for c in alone]
    assert [round(got[i].confidence, 4) for i in range(len(regions))] == [round(c.confidence, 4) for c in alone]
    longest_prompt = max(len(trained_dam._prompt_ids(query_of(i, trained_dam))) - 1 + trained_dam.tokens_per_image for i in range(3))
    assert max(widths) <= longest_prompt + max_new_tokens  # trimmed: the cache never outgrows its oldest row


def test_a_dropped_row_leaves_the_others_unchanged(trained_dam, regions):
    alone = [trained_dam.describe(image, [mask], max_new_tokens=30)[0].token_ids for image, mask in regions[:4]]
    session = trained_dam.caption_session(30)
    got = dict(session.admit([(*regions[i], None) for i in range(3)], [0, 1, 2]))
    got.update(session.step())
    session.drop([1])
    got.update(session.admit([(*regions[3], None)], [3]))
    while session.rows:
        got.update(session.step())
    assert 1 not in got and [got[i].token_ids for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]


def test_an_unusable_region_admits_nothing(trained_dam, regions):
    session = trained_dam.caption_session(10)
    image, mask = regions[0]
    with pytest.raises(ValueError, match="differs from image size"):
        session.admit([(image, mask[:-1], None), (image, mask, None)], ["bad", "good"])
    assert session.rows == 0
    with torch.inference_mode():
        assert session.step() == []


def test_visual_tokens_made_ahead_are_used_only_when_this_model_made_them(trained_dam, regions):
    """prepared_rows encodes in the caller's thread (the scheduler's prepare-ahead thread); the session uses those
    tokens only when its own model made them, e.g. not after a promotion between preparation and admission."""
    alone = [trained_dam.describe(image, [mask], max_new_tokens=30)[0].token_ids for image, mask in regions[:2]]
    image, mask = regions[0]
    batch = trained_dam.prepare_regions(image, [mask])
    ahead = prepared_rows(trained_dam, batch)[0]
    assert ahead.encoded_by is trained_dam and ahead.visual is not None
    torch.testing.assert_close(ahead.visual, trained_dam.encode_prepared(batch.pixel_values, batch.is_focal)[0])
    assert prepared_rows(trained_dam, batch, encode=False)[0].visual is None

    def caption(prepared):
        session = trained_dam.caption_session(30)
        got = dict(session.admit([(image, mask, None, prepared)], ["row"]))
        while session.rows:
            got.update(session.step())
        return got["row"].token_ids

    blank = torch.zeros_like(ahead.visual)  # tokens nobody could caption the region from
    assert caption(ahead) == alone[0]
    assert caption(PreparedRegion(ahead.pixel_values, ahead.is_focal, blank, encoded_by=object())) == alone[0]
    assert caption(PreparedRegion(ahead.pixel_values, ahead.is_focal, blank, encoded_by=trained_dam)) != alone[0]
    assert caption((ahead.pixel_values, ahead.is_focal)) == alone[0]  # a bare prepare_regions row
