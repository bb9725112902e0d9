"""Parity with the official implementation: the fixture's tiny random DAM (fp32, CPU) must reproduce every array
of expected.npz within 1e-4 (ids exactly), loaded through from_pretrained from the official folder layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

CASES = ["imgA_small", "imgA_border", "imgA_large", "imgB_small", "imgB_border", "imgB_large", "video"]
ATOL = 1e-4


def close(actual, expected, name):
    actual = np.asarray(actual.detach().cpu() if isinstance(actual, torch.Tensor) else actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if actual.size:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()
        assert diff <= ATOL, f"{name}: max abs diff {diff:.3e} > {ATOL}"


@pytest.fixture(scope="module")
def encoded(parity_model, fixture_cases, load_inputs):
    """Per case: (RegionBatch, ImageEncoding, prompt ids)."""
    from dam_model.focal import preprocess_frames
    from dam_model.prompt import build_prompt, tokenize_prompt

    out = {}
    size = parity_model.config.vision.image_size
    for name in CASES:
        frames, masks = load_inputs(fixture_cases[name])
        if name == "video":
            batch, indices = parity_model.prepare_video(frames, masks)
            assert indices == list(range(8))
            query = parity_model.config.video_query
        else:
            batch = preprocess_frames(frames, masks, size)
            query = parity_model.config.image_query
        with torch.no_grad():
            encoding = parity_model.encode_images_detailed(batch.pixel_values, batch.is_focal)
        out[name] = (batch, encoding, tokenize_prompt(parity_model.tokenizer, build_prompt(query)))
    return out


@pytest.mark.parametrize("case", CASES)
def test_preprocessing_matches(case, encoded, expected):
    batch, _, _ = encoded[case]
    assert np.array_equal(batch.pixel_values_u8, expected[f"{case}__pixel_values_u8"])
    assert np.array_equal(batch.pixel_values.numpy(), expected["pixel_values_lut"][expected[f"{case}__pixel_values_u8"]])
    assert np.array_equal(batch.crop_boxes, expected[f"{case}__crop_box_xyxy"])
    assert np.array_equal(batch.mask_boxes, expected[f"{case}__mask_box_xywh"])
    assert np.array_equal(batch.is_focal.numpy(), expected[f"{case}__is_cimage"])


@pytest.mark.parametrize("case", CASES)
def test_prompt_ids_exact(case, encoded, expected):
    assert encoded[case][2] == expected[f"{case}__input_ids"][0].tolist()


@pytest.mark.parametrize("case", CASES)
def test_vision_and_projector_match(case, encoded, expected):
    _, enc, _ = encoded[case]
    if case != "video":  # the fixture stores per-layer states for image cases only
        close(torch.stack(enc.global_hidden_states), expected[f"{case}__global_hidden_states"], "global_hidden_states")
        focal = expected[f"{case}__focal_hidden_states"]
        if focal.shape[1]:
            close(torch.stack(enc.focal_hidden_states), focal, "focal_hidden_states")
        else:
            assert enc.focal_hidden_states == []
    close(enc.global_features, expected[f"{case}__global_features"], "global_features")
    close(enc.context_provider_output, expected[f"{case}__context_provider_output"], "context_provider_output")
    close(enc.projector_input, expected[f"{case}__projector_input"], "projector_input")
    close(enc.visual_tokens, expected[f"{case}__visual_tokens"], "visual_tokens")


@pytest.mark.parametrize("case", CASES)
def test_embeddings_logits_and_greedy_match(case, encoded, expected, parity_model):
    from dam_model.generation import GenerationSettings, generate

    _, enc, ids = encoded[case]
    # encode_images (inference path, only the layers needed) agrees with the detailed path
    batch = encoded[case][0]
    with torch.no_grad():
        fast = parity_model.encode_images(batch.pixel_values, batch.is_focal)
    close(fast, expected[f"{case}__visual_tokens"], "encode_images")
    with torch.no_grad():
        embeds, mask, _ = parity_model.splice([ids], enc.visual_tokens)
        close(embeds, expected[f"{case}__inputs_embeds"], "inputs_embeds")
        logits = parity_model.llm(inputs_embeds=embeds, attention_mask=mask).logits
        close(logits, expected[f"{case}__logits"], "logits")
        forward = parity_model(input_ids=torch.tensor([ids]), pixel_values=batch.pixel_values, is_focal=batch.is_focal)
        close(forward.logits, expected[f"{case}__logits"], "forward logits")
    eos = parity_model.config.llm.eos_token_id
    greedy, _ = generate(parity_model.llm, embeds, mask, GenerationSettings(max_new_tokens=12, stop_at_eos=False), eos)
    assert greedy[0] == expected[f"{case}__greedy_ids"].tolist()
    official, _ = generate(parity_model.llm, embeds, mask, GenerationSettings(max_new_tokens=12), eos)
    assert official[0] == expected[f"{case}__official_get_description_ids"].tolist()


def test_public_api_reproduces_official_description(parity_model, fixture_cases, load_inputs, expected):
    """describe / describe_video (what users call) give the official get_description ids."""
    frames, masks = load_inputs(fixture_cases["imgB_border"])
    caption = parity_model.describe(frames[0], masks, max_new_tokens=12)[0]
    assert caption.token_ids == expected["imgB_border__official_get_description_ids"].tolist()
    frames, masks = load_inputs(fixture_cases["video"])
    caption = parity_model.describe_video(frames, masks, max_new_tokens=12)
    assert caption.token_ids == expected["video__official_get_description_ids"].tolist()
