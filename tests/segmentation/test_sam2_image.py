"""Sam2Segmenter on single images: config names, strict loading, shapes, prompt effects, errors, automatic masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dam_model.segmentation import (
    CheckpointMismatchError,
    MaskPrediction,
    Sam2Segmenter,
    build_sam2_model,
    build_segmenter,
    load_checkpoint_strict,
    resolve_config,
)

from .conftest import TEST_IMAGE_SIZE, textured_background


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "name, canonical",
    [
        ("sam2.1_hiera_t", "sam2.1_hiera_t"),
        ("tiny", "sam2.1_hiera_t"),
        ("small", "sam2.1_hiera_s"),
        ("sam2.1_hiera_base_plus", "sam2.1_hiera_b+"),
        ("b+", "sam2.1_hiera_b+"),
        ("facebook/sam2.1-hiera-large", "sam2.1_hiera_l"),
        ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_s"),
    ],
)
def test_config_aliases_resolve(name, canonical):
    resolved, path = resolve_config(name)
    assert resolved == canonical
    assert path == f"configs/sam2.1/{canonical}.yaml"


def test_unknown_config_lists_valid_names():
    with pytest.raises(ValueError, match="unknown SAM 2 config 'hiera_huge'.*sam2.1_hiera_t.*tiny"):
        resolve_config("hiera_huge")
    with pytest.raises(ValueError, match="unknown SAM 2 config"):
        Sam2Segmenter.from_checkpoint("sam3_giant", None, device="cpu")


def test_image_size_must_be_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2_model("tiny", None, device="cpu", image_size=250)


def test_reduced_image_size_propagates_to_heads(sam_model):
    assert sam_model.image_size == TEST_IMAGE_SIZE
    assert sam_model.sam_image_embedding_size == TEST_IMAGE_SIZE // 16
    assert tuple(sam_model.sam_prompt_encoder.input_image_size) == (TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    rope = sam_model.memory_attention.layers[0].self_attn
    assert rope.freqs_cis.shape[0] == (TEST_IMAGE_SIZE // 16) ** 2


# ---------------------------------------------------------------------------------------------- strict loading
@pytest.fixture(scope="module")
def checkpoint_path(sam_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sam_model.state_dict()}, path)
    return path


def test_checkpoint_loads_strictly_and_replaces_random_weights(sam_model, checkpoint_path):
    # seed 1 gives different random weights; loading the seed-0 checkpoint must overwrite all of them
    loaded = build_segmenter(
        "sam2", config_name="tiny", checkpoint=checkpoint_path, device="cpu", image_size=TEST_IMAGE_SIZE, seed=1
    )
    assert isinstance(loaded, Sam2Segmenter)
    for name, value in sam_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def _edited_checkpoint(sam_model, tmp_path, edit):
    state = dict(sam_model.state_dict())
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save({"model": state}, path)
    return path


def test_missing_key_is_an_error_naming_it(sam_model, tmp_path):
    path = _edited_checkpoint(sam_model, tmp_path, lambda s: s.pop("no_mem_embed"))
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): no_mem_embed"):
        load_checkpoint_strict(sam_model, path)


def test_unexpected_key_is_an_error_naming_it(sam_model, tmp_path):
    path = _edited_checkpoint(sam_model, tmp_path, lambda s: s.__setitem__("extra_head.weight", torch.zeros(2)))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\): extra_head.weight"):
        load_checkpoint_strict(sam_model, path)


def test_shape_mismatch_is_an_error_naming_it(sam_model, tmp_path):
    path = _edited_checkpoint(sam_model, tmp_path, lambda s: s.__setitem__("no_mem_embed", torch.zeros(1, 1, 8)))
    with pytest.raises(CheckpointMismatchError, match=r"shape \(1\): no_mem_embed"):
        load_checkpoint_strict(sam_model, path)


def test_missing_checkpoint_file(sam_model, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint_strict(sam_model, tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("height, width", [(45, 67), (67, 45), (40, 300)])
def test_mask_at_original_resolution(segmenter, height, width):
    image = textured_background(height, width)
    prediction = segmenter.predict(image, points=[[width // 2, height // 2]], labels=[1])
    assert isinstance(prediction, MaskPrediction)
    assert prediction.mask.shape == (height, width)
    assert prediction.mask.dtype == np.bool_
    assert prediction.logits.shape == (1, TEST_IMAGE_SIZE // 4, TEST_IMAGE_SIZE // 4)
    assert prediction.logits.dtype == np.float32
    assert isinstance(prediction.score, float) and np.isfinite(prediction.score)


def test_negative_point_changes_logits(segmenter):
    image = textured_background(45, 67)
    alone = segmenter.predict(image, points=[[20, 20]], labels=[1])
    with_negative = segmenter.predict(image, points=[[20, 20], [50, 30]], labels=[1, 0])
    flipped = segmenter.predict(image, points=[[20, 20], [50, 30]], labels=[1, 1])
    assert np.abs(alone.logits - with_negative.logits).max() > 1e-3
    # the label itself matters, not only the extra coordinate
    assert np.abs(flipped.logits - with_negative.logits).max() > 1e-3


def test_box_and_refinement_change_the_result(segmenter):
    image = textured_background(45, 67)
    point = segmenter.predict(image, points=[[20, 20]], labels=[1])
    both = segmenter.predict(image, points=[[20, 20]], labels=[1], box=[5, 5, 40, 35])
    box = segmenter.predict(image, box=[5, 5, 40, 35])
    refined = segmenter.predict(image, points=[[20, 20]], labels=[1], mask_input=point.logits)
    assert box.mask.shape == (45, 67)
    assert np.abs(point.logits - both.logits).max() > 1e-3
    assert np.abs(both.logits - box.logits).max() > 1e-3
    assert np.abs(point.logits - refined.logits).max() > 1e-3


def test_mask_is_thresholded_upsampled_logits(segmenter):
    image = textured_background(45, 67)
    prediction = segmenter.predict(image, points=[[20, 20]], labels=[1])
    full = torch.nn.functional.interpolate(
        torch.from_numpy(prediction.logits)[None], size=(45, 67), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.array_equal(prediction.mask, full > 0)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script:FutureWarning")
def test_same_as_sam2_image_predictor(segmenter):
    """Our encoder/decoder path reproduces sam2's SAM2ImagePredictor (its feature sizes patched for S) on one click."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = textured_background(45, 67)
    ours = segmenter.predict(image, points=[[20, 20]], labels=[1])
    reference = SAM2ImagePredictor(segmenter.model)
    s = TEST_IMAGE_SIZE
    reference._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]  # sam2 hard-codes them for S = 1024
    reference.set_image(image)
    masks, scores, low_res = reference.predict(np.array([[20, 20]]), np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    assert ours.score == pytest.approx(float(scores[best]), abs=1e-5)
    assert np.abs(ours.logits - low_res[best : best + 1]).max() < 1e-4
    assert np.array_equal(ours.mask, masks[best] > 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points": [[70, 10]], "labels": [1]}, r"point \(70, 10\) is outside the 67x45 image"),
        ({"points": [[-1, 10]], "labels": [1]}, "outside the 67x45 image"),
        ({"points": [[10, 46]], "labels": [0]}, "outside the 67x45 image"),
        ({"box": [0, 0, 68, 20]}, "outside the 67x45 image"),
        ({"box": [30, 10, 20, 40]}, "x1 > x0"),
        ({"points": [[1, 1], [2, 2]], "labels": [1]}, "2 points but 1 labels"),
        ({"points": [[1, 1]], "labels": [2]}, "labels must be 1"),
        ({"points": [[1, 1]]}, "labels are required"),
        ({}, "at least one prompt"),
        ({"points": [[1, 1]], "labels": [1], "mask_input": np.zeros((1, 7, 7))}, "mask_input must be"),
    ],
)
def test_bad_prompts_raise_clear_errors(segmenter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmenter.predict(textured_background(45, 67), **kwargs)
    assert segmenter.encoder_calls == 0  # rejected before the encoder runs


def test_bfloat16_autocast_and_bad_dtype(sam_model):
    prediction = Sam2Segmenter(sam_model, dtype="bfloat16").predict(textured_background(33, 47), box=[2, 2, 30, 20])
    assert prediction.mask.shape == (33, 47) and prediction.logits.dtype == np.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        Sam2Segmenter(sam_model, dtype="int8")


# ---------------------------------------------------------------------------------------------- automatic masks
def test_automatic_masks_sorted_capped_and_filtered(segmenter):
    image = textured_background(48, 64)
    segmenter.predict(image, points=[[5, 5]], labels=[1])
    calls = segmenter.encoder_calls
    loose = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    masks = segmenter.automatic_masks(image, max_masks=50, min_area=0, **loose)
    assert segmenter.encoder_calls == calls  # the cached embedding served the grid too
    assert len(masks) >= 2
    keys = [(m.score, m.area) for m in masks]
    assert keys == sorted(keys, reverse=True)
    assert all(m.mask.shape == (48, 64) and m.mask.dtype == np.bool_ for m in masks)
    capped = segmenter.automatic_masks(image, max_masks=2, min_area=0, **loose)
    assert [m.score for m in capped] == [m.score for m in masks[:2]]
    threshold = sorted(m.area for m in masks)[len(masks) // 2]
    large = segmenter.automatic_masks(image, max_masks=50, min_area=threshold, **loose)
    assert large and all(m.area >= threshold for m in large)
    assert len(large) == sum(m.area >= threshold for m in masks)


# ---------------------------------------------------------------------------------------------- fast decoder
@pytest.mark.parametrize(
    "prompt",
    [
        {"points": [[10, 10]], "labels": [1]},
        {"points": [[10, 10], [30, 20]], "labels": [1, 0]},
        {"box": [3, 3, 40, 30]},
        {"box": [3, 3, 40, 30], "points": [[20, 20]], "labels": [0]},
    ],
)
def test_fast_decoder_matches_sam2_decoder(sam_model, monkeypatch, prompt):
    image = textured_background(45, 67, seed=4)
    reference = Sam2Segmenter(sam_model, fast_decoder=False).predict(image, **prompt)
    sam2_decoder_calls = []
    original = sam_model.sam_mask_decoder.forward
    monkeypatch.setattr(sam_model.sam_mask_decoder, "forward", lambda *a, **k: sam2_decoder_calls.append(1) or original(*a, **k))
    fast_segmenter = Sam2Segmenter(sam_model)
    fast = fast_segmenter.predict(image, **prompt)
    assert not sam2_decoder_calls  # the reimplemented path ran
    assert np.abs(fast.logits - reference.logits).max() < 1e-5
    assert fast.score == pytest.approx(reference.score, abs=1e-6)
    assert np.array_equal(fast.mask, reference.mask)
    # refinement with a mask prompt goes through sam2's own decoder
    fast_segmenter.predict(image, **prompt, mask_input=fast.logits)
    assert len(sam2_decoder_calls) == 1
