"""Decoding: batched greedy equals one-at-a-time, streaming, confidence, sampling, EOS stopping, video."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dam_model.generation import DecodeStats, GenerationSettings, between_steps, generate, nucleus_filter
from dam_model.synthetic import generate_dataset, iter_region_samples


def test_batch_equals_single_greedy(tiny_model, scene):
    from dam_model.focal import preprocess_regions

    images, masks = scene
    sizes = set()
    for image, region_masks in zip(images, masks):
        boxes = preprocess_regions(image, region_masks, 56).crop_boxes
        sizes |= {(int(b[2] - b[0]), int(b[3] - b[1])) for b in boxes}
    assert len(sizes) >= 4  # regions with different crop sizes
    batched = tiny_model.describe_batch(list(zip(images, masks)), max_new_tokens=10)
    assert [len(c) for c in batched] == [4, 4]
    singles = [[tiny_model.describe(image, [m], max_new_tokens=10)[0] for m in region_masks]
               for image, region_masks in zip(images, masks)]
    for row_b, row_s in zip(batched, singles):
        for b, s in zip(row_b, row_s):
            assert b.token_ids == s.token_ids and b.text == s.text
            assert abs(b.confidence - s.confidence) < 1e-4
    all_ids = [c.token_ids for row in batched for c in row]
    assert len({tuple(i) for i in all_ids}) > 1  # the regions really get different captions


def test_stream_concatenation_and_confidence(tiny_model, scene):
    images, masks = scene
    caption = tiny_model.describe(images[1], [masks[1][0]], max_new_tokens=16)[0]
    deltas = list(tiny_model.stream(images[1], masks[1][0], max_new_tokens=16))
    assert len(deltas) >= 2 and "".join(deltas) == caption.text
    assert math.isfinite(caption.confidence) and caption.confidence <= 0


def test_sampling_is_seeded(tiny_model, scene):
    images, masks = scene
    kwargs = dict(max_new_tokens=8, temperature=1.5, top_p=0.95)
    a = tiny_model.describe(images[0], masks[0][:2], seed=7, **kwargs)
    b = tiny_model.describe(images[0], masks[0][:2], seed=7, **kwargs)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    other = tiny_model.describe(images[0], masks[0][:2], seed=8, **kwargs)
    assert [c.token_ids for c in other] != [c.token_ids for c in a]
    greedy = tiny_model.describe(images[0], masks[0][:2], max_new_tokens=8)
    assert [c.token_ids for c in a] != [c.token_ids for c in greedy]


def test_nucleus_filter_keeps_the_top_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(nucleus_filter(logits, 0.5))
    assert kept.tolist() == [[True, False, False, False]]
    kept = torch.isfinite(nucleus_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(nucleus_filter(logits, 1.0)).all()


class ScriptedLLM:
    """Stands in for the LLM: returns logits that favour a scripted token per step (ignores its inputs)."""

    def __init__(self, script, vocab=6):
        self.script, self.vocab, self.calls = script, vocab, 0

    def __call__(self, **kwargs):
        batch = (kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]).shape[0]
        logits = torch.zeros(batch, 1, self.vocab)
        logits[:, 0, self.script[min(self.calls, len(self.script) - 1)]] = 3.0
        self.calls += 1
        return SimpleNamespace(logits=logits)


def test_eos_stops_and_max_new_tokens_caps():
    embeds, mask = torch.zeros(1, 3, 4), torch.ones(1, 3)
    ids, means = generate(ScriptedLLM([4, 5, 2, 3]), embeds, mask, GenerationSettings(max_new_tokens=10), eos_token_id=2)
    assert ids == [[4, 5, 2]]
    expected = math.log(math.exp(3) / (math.exp(3) + 5))
    assert abs(means[0] - expected) < 1e-6
    ids, _ = generate(ScriptedLLM([4, 5, 2, 3]), embeds, mask, GenerationSettings(max_new_tokens=10, stop_at_eos=False), 2)
    assert ids == [[4, 5, 2, 3, 3, 3, 3, 3, 3, 3]]
    ids, _ = generate(ScriptedLLM([4, 5, 2]), embeds, mask, GenerationSettings(max_new_tokens=2), 2)
    assert ids == [[4, 5]]


def test_video_uses_eight_frames_of_tokens(tiny_model, scene):
    images, masks = scene
    frames = [images[0]] * 8
    frame_masks = [masks[0][k % 4] for k in range(8)]
    batch, indices = tiny_model.prepare_video(frames, frame_masks)
    assert indices == list(range(8)) and batch.pixel_values.shape[0] == 8
    visual = tiny_model.encode_images(batch.pixel_values, batch.is_focal)
    assert visual.shape[:2] == (8, tiny_model.config.tokens_per_image)
    ids = tiny_model._prompt_ids(None, video=True)
    embeds, _, _ = tiny_model.splice([ids], visual)
    assert embeds.shape[1] == len(ids) - 8 + 8 * tiny_model.config.tokens_per_image
    caption = tiny_model.describe_video(frames, frame_masks, max_new_tokens=6)
    assert len(caption.token_ids) >= 1 and caption.confidence <= 0


def test_video_with_five_usable_frames_follows_the_rule(tiny_model, scene):
    images, masks = scene
    empty = np.zeros_like(masks[0][0])
    frame_masks = [masks[0][0], empty, masks[0][1], masks[0][2], empty, empty, masks[0][3], masks[0][1]]
    _, indices = tiny_model.prepare_video([images[0]] * 8, frame_masks)
    assert indices == [0, 0, 2, 2, 3, 6, 6, 7]  # usable 0, 2, 3, 6, 7 -> positions 0,0,1,1,2,3,3,4
    deltas = list(tiny_model.describe_video([images[0]] * 8, frame_masks, max_new_tokens=5, stream=True))
    assert "".join(deltas) == tiny_model.describe_video([images[0]] * 8, frame_masks, max_new_tokens=5).text
    with pytest.raises(ValueError, match="no usable frame"):
        tiny_model.describe_video([images[0]] * 3, [empty] * 3)


def test_finished_rows_are_compacted_and_greedy_results_do_not_change(trained_dam):
    """Rows that emitted </s> leave the batch; token ids equal compaction-off and one-by-one decoding."""
    model = trained_dam
    samples = list(iter_region_samples(generate_dataset(seed=5, n=4)))[:6]
    visual, _ = model._encode_items([(s.image, [s.mask]) for s in samples])
    detail, brief = model._prompt_ids(None), model._prompt_ids("<image>\nDescribe the masked region briefly.")
    rows = [detail if i % 2 == 0 else brief for i in range(len(samples))]  # mixed caption lengths
    eos = model.config.llm.eos_token_id
    embeds, mask, _ = model.splice(rows, visual, padding_side="left")
    results = {}
    for compact in (False, True):
        stats = DecodeStats()
        settings = GenerationSettings(max_new_tokens=48, compact_finished=compact)
        results[compact] = (*generate(model.llm, embeds, mask, settings, eos, stats=stats), stats)
    (ids_off, means_off, off), (ids_on, means_on, on) = results[False], results[True]
    lengths = sorted(len(r) for r in ids_on)
    assert all(r[-1] == eos for r in ids_on) and lengths[-1] - lengths[0] >= 8  # every row ended, lengths differ
    assert ids_on == ids_off
    assert max(abs(a - b) for a, b in zip(means_on, means_off)) < 1e-5
    assert on.compactions >= 1 and on.finished_row_steps == 0
    assert on.saved_row_steps == off.finished_row_steps > 0
    assert on.row_steps + on.saved_row_steps == off.row_steps
    for i, row in enumerate(rows):  # one by one: the same ids
        one_embeds, one_mask, _ = model.splice([row], visual[i:i + 1], padding_side="left")
        single, _ = generate(model.llm, one_embeds, one_mask, GenerationSettings(max_new_tokens=48), eos)
        assert single[0] == ids_on[i]


def test_describe_batch_with_compaction_equals_describe_one_by_one(trained_dam):
    samples = list(iter_region_samples(generate_dataset(seed=6, n=4)))[:6]
    batched = trained_dam.describe_batch([(s.image, [s.mask]) for s in samples], max_new_tokens=48)
    singles = [trained_dam.describe(s.image, [s.mask], max_new_tokens=48)[0] for s in samples]
    assert [b[0].token_ids for b in batched] == [s.token_ids for s in singles]
    assert [b[0].text for b in batched] == [s.text for s in singles]
    assert len({len(s.token_ids) for s in singles}) > 1  # lengths differ: some rows were dropped early


def test_between_steps_runs_the_callback_between_steps_and_not_inside_itself():
    embeds, mask = torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)[..., 0] + 1
    calls, nested = [], []

    def serve_a_click() -> None:
        calls.append(len(calls))
        ids, _ = generate(ScriptedLLM([3, 4, 2]), embeds, mask, GenerationSettings(max_new_tokens=5), 2)
        nested.append(ids)  # the nested decode ran to its end without calling back into this function

    with between_steps(serve_a_click):
        ids, _ = generate(ScriptedLLM([4, 5, 5, 2]), embeds, mask, GenerationSettings(max_new_tokens=10), 2)
    assert ids == [[4, 5, 5, 2]]
    assert len(calls) == 3 and nested == [[[3, 4, 2]]] * 3  # between steps 1-2, 2-3, 3-4; not after the last
    generate(ScriptedLLM([4, 2]), embeds, mask, GenerationSettings(max_new_tokens=10), 2)
    assert len(calls) == 3  # outside the block: no callback
