"""Architecture properties: zero-init equivalence, weight sharing, projector token order, DAM-3B shapes on the
meta device, config round trips, gates, training forward and collation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dam_model.config import IMAGE_QUERY_DAM3B, IMAGE_QUERY_JOINT, DAMConfig
from dam_model.modeling import DescribeAnythingModel, collate_training_batch
from dam_model.projector import downsample_2x2
from dam_model.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, encode_training_example


def fresh_tiny(tokenizer=None, **overrides):
    torch.manual_seed(0)
    return DescribeAnythingModel.from_config(DAMConfig.tiny(**overrides), tokenizer=tokenizer).eval()


# -- zero-init property -------------------------------------------------------------------------------------------
def test_zero_init_focal_pass_is_plain_siglip_of_the_crop(scene):
    from dam_model.focal import preprocess_regions

    model = fresh_tiny()
    images, masks = scene
    batch = preprocess_regions(images[0], masks[0][:3], model.config.vision.image_size)
    assert batch.is_focal.tolist() == [True, True, True]
    with torch.no_grad():
        enc = model.encode_images_detailed(batch.pixel_values, batch.is_focal, all_layers=False)
        crop = batch.pixel_values[:, 4:].clone()
        crop[:, 3] = torch.rand_like(crop[:, 3])  # mask embedding is zero: the mask cannot matter
        plain = model.vision_tower(crop, num_layers=model.config.num_vision_layers_used)
        assert torch.allclose(enc.context_provider_output, plain, atol=1e-6)
        # the property depends on the zero init: non-zero gates change the focal features
        for layer in model.context_provider.context_provider_module.layers:
            layer.attn_factor.fill_(0.7)
        gated = model.encode_images_detailed(batch.pixel_values, batch.is_focal, all_layers=False)
        assert (gated.context_provider_output - plain).abs().max() > 1e-5


def siglip_parameter_count(cfg) -> int:
    d, i, p = cfg.hidden_size, cfg.intermediate_size, cfg.patch_size
    embeddings = p * p * cfg.num_channels * d + d + p * p * cfg.num_mask_channels * d + d + cfg.num_patches * d
    layer = 4 * (d * d + d) + 2 * 2 * d + (d * i + i) + (i * d + d)
    head = d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * i + i) + (i * d + d)
    return embeddings + cfg.num_hidden_layers * layer + 2 * d + head


def test_one_siglip_serves_both_passes():
    model = fresh_tiny()
    cfg = model.config
    vision = sum(p.numel() for p in model.vision_tower.parameters())
    assert vision == siglip_parameter_count(cfg.vision)  # exactly one SigLIP, no copy for the focal pass
    total = sum(p.numel() for p in model.parameters())
    parts = sum(sum(p.numel() for p in getattr(model, c).parameters())
                for c in ("vision_tower", "context_provider", "mm_projector", "llm"))
    assert total == parts
    # the focal pass runs the very same modules: gradients of one SigLIP weight come from both passes
    pixels = torch.randn(1, 8, cfg.vision.image_size, cfg.vision.image_size)
    for layer in model.context_provider.context_provider_module.layers:
        layer.attn_factor.data.fill_(0.5)
    weight = model.vision_tower.vision_model.encoder.layers[0].mlp.fc1.weight
    model.encode_images(pixels, torch.tensor([False])).sum().backward()
    global_only = weight.grad.clone()
    weight.grad = None
    model.encode_images(pixels, torch.tensor([True])).sum().backward()
    assert not torch.allclose(weight.grad, global_only)


# -- projector order ------------------------------------------------------------------------------------------------
def naive_downsample(x: np.ndarray) -> np.ndarray:
    """Independent loop: zero-pad to even, token t = j * M + i, chunks x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)."""
    b, n, c = x.shape
    g = int(round(n**0.5))
    grid = np.zeros((b, g + g % 2, g + g % 2, c), x.dtype)
    grid[:, :g, :g] = x.reshape(b, g, g, c)
    m = (g + 1) // 2
    out = np.zeros((b, m * m, 4 * c), x.dtype)
    for j in range(m):
        for i in range(m):
            out[:, j * m + i] = np.concatenate([grid[:, 2 * i, 2 * j], grid[:, 2 * i, 2 * j + 1],
                                                grid[:, 2 * i + 1, 2 * j], grid[:, 2 * i + 1, 2 * j + 1]], axis=-1)
    return out


@pytest.mark.parametrize("grid", [5, 6, 7, 8, 27])
def test_projector_token_order(grid):
    x = torch.randn(2, grid * grid, 3)
    assert np.array_equal(downsample_2x2(x).numpy(), naive_downsample(x.numpy()))


# -- DAM-3B on the meta device --------------------------------------------------------------------------------------
def test_dam3b_meta_build_shapes_and_count():
    with torch.device("meta"):
        model = DescribeAnythingModel.from_config(DAMConfig.dam_3b())
    total = sum(p.numel() for p in model.parameters())
    assert 3.54e9 <= total <= 3.56e9, total
    states = model.component_state_dicts()
    vt, cp, mp, llm = states["vision_tower"], states["context_provider"], states["mm_projector"], states["llm"]
    assert vt["vision_model.embeddings.mask_patch_embedding.weight"].shape == (1152, 1, 14, 14)
    assert vt["vision_model.embeddings.mask_patch_embedding.bias"].shape == (1152,)
    assert vt["vision_model.embeddings.position_embedding.weight"].shape == (729, 1152)
    assert vt["vision_model.encoder.layers.26.mlp.fc1.weight"].shape == (4304, 1152)
    assert "vision_model.post_layernorm.weight" in vt and "vision_model.head.attention.in_proj_weight" in vt
    assert cp["context_provider_module.layers.0.attn_factor"].shape == (1,)
    assert cp["context_provider_module.layers.26.cross_attn.q_proj.weight"].shape == (1152, 1152)
    assert mp["layers.1.weight"].shape == (4608,)
    assert mp["layers.2.weight"].shape == (2560, 4608)
    assert mp["layers.4.weight"].shape == (2560, 2560)
    assert set(mp) == {f"layers.{i}.{k}" for i in (1, 2, 4) for k in ("weight", "bias")}
    assert llm["model.layers.31.mlp.gate_proj.weight"].shape == (6912, 2560)
    assert llm["lm_head.weight"].shape == (32000, 2560)
    cfg = model.config
    assert cfg.vision.grid_size == 27 and cfg.tokens_per_image == 196
    assert cfg.num_video_frames * cfg.tokens_per_image == 1568
    assert cfg.num_vision_layers_used == 26


# -- config ---------------------------------------------------------------------------------------------------------
def test_config_round_trip_of_the_official_file(fixture_dir):
    official = json.loads((fixture_dir / "model" / "config.json").read_text())
    cfg = DAMConfig.from_official_dict(official)
    assert (cfg.vision.hidden_size, cfg.vision.grid_size, cfg.context_provider.intermediate_size) == (48, 5, 47)
    assert cfg.llm.vocab_size == 448 and cfg.llm.extra["head_dim"] == 16
    assert cfg.context_provider.gate_style == "linear"
    again = cfg.to_official_dict()
    for key, value in official.items():
        assert again[key] == value, key
    assert DAMConfig.from_official_dict(again).to_official_dict() == again  # a fixed point after one pass


def test_config_validation_and_query_rule():
    with pytest.raises(ValueError, match="gate_style"):
        DAMConfig.tiny(gate_style="relu")
    with pytest.raises(ValueError, match="divisible"):
        DAMConfig.tiny(vision_hidden_size=30, vision_heads=4)
    with pytest.raises(ValueError, match="num_video_frames"):
        DAMConfig.tiny(video_query="Video: <image>\nDescribe.")
    official = DAMConfig.tiny().to_official_dict()
    assert DAMConfig.from_official_dict(official, "nvidia/DAM-3B-Video").image_query == IMAGE_QUERY_JOINT
    assert DAMConfig.from_official_dict(official, "nvidia/DAM-3B").image_query == IMAGE_QUERY_DAM3B
    official["dam_image_query"] = "<image>\nWhat is this?"
    assert DAMConfig.from_official_dict(official, "DAM-3B-Video").image_query == "<image>\nWhat is this?"
    tanh = DAMConfig.tiny(gate_style="tanh")
    assert DAMConfig.from_official_dict(tanh.to_official_dict()).context_provider.gate_style == "tanh"


def test_tanh_gates_equal_linear_gates_of_tanh_values(scene):
    from dam_model.focal import preprocess_regions

    linear, tanh = fresh_tiny(), fresh_tiny(gate_style="tanh")
    tanh.load_state_dict(linear.state_dict())
    with torch.no_grad():
        for a, b in zip(linear.context_provider.context_provider_module.layers,
                        tanh.context_provider.context_provider_module.layers):
            b.attn_factor.fill_(0.8)
            b.mlp_factor.fill_(-1.2)
            a.attn_factor.fill_(float(np.tanh(0.8)))
            a.mlp_factor.fill_(float(np.tanh(-1.2)))
        batch = preprocess_regions(scene[0][0], scene[1][0][:2], 56)
        assert torch.allclose(linear.encode_images(batch.pixel_values, batch.is_focal),
                              tanh.encode_images(batch.pixel_values, batch.is_focal), atol=1e-6)


# -- training forward -----------------------------------------------------------------------------------------------
def test_forward_loss_and_collate(tiny_model, tokenizer, scene):
    from dam_model.focal import preprocess_regions

    images, masks = scene
    batch = preprocess_regions(images[0], masks[0][:2], tiny_model.config.vision.image_size)
    examples = []
    for k, answer in enumerate(["A red cup.", "Two small green boxes on a wooden table."]):
        ids, labels = encode_training_example(tokenizer, tiny_model.config.image_query, answer)
        assert ids.count(IMAGE_TOKEN_ID) == 1 and labels[-1] == tokenizer.eos_token_id
        assert all(lab == IGNORE_INDEX for lab, t in zip(labels, ids) if t == IMAGE_TOKEN_ID)
        examples.append((ids, labels, batch.pixel_values[k:k + 1], batch.is_focal[k:k + 1]))
    collated = tiny_model.collate(examples)
    assert collated["input_ids"].shape[0] == 2 and collated["pixel_values"].shape[0] == 2
    assert collated["attention_mask"][0].sum() < collated["attention_mask"][1].sum()  # right padding
    out = tiny_model(**collated)
    assert out.loss is not None and torch.isfinite(out.loss)
    # loss = mean cross-entropy over answer tokens and </s> of both rows, checked by hand
    tokens = tiny_model.config.tokens_per_image
    total, count = 0.0, 0
    for b, (ids, labels, _, _) in enumerate(examples):
        row_labels = out.labels[b]
        assert int((row_labels != IGNORE_INDEX).sum()) == sum(1 for lab in labels if lab != IGNORE_INDEX)
        logp = torch.log_softmax(out.logits[b].detach().float(), -1)
        for t in range(row_labels.shape[0] - 1):
            if row_labels[t + 1] != IGNORE_INDEX:
                total -= float(logp[t, row_labels[t + 1]])
                count += 1
    assert count == sum(1 for ex in examples for lab in ex[1] if lab != IGNORE_INDEX)
    assert out.logits.shape[1] == max(len(ex[0]) for ex in examples) - 1 + tokens
    assert abs(float(out.loss.detach()) - total / count) < 1e-4
    out.loss.backward()
    assert tiny_model.mm_projector.layers[2].weight.grad is not None
    tiny_model.zero_grad(set_to_none=True)


def test_image_placeholder_count_mismatch_raises(tiny_model, tokenizer):
    ids, labels = encode_training_example(tokenizer, tiny_model.config.image_query, "A cup.")
    pixels = torch.zeros(2, 8, 56, 56)
    with pytest.raises(ValueError, match="image placeholders"):
        tiny_model(input_ids=torch.tensor([ids]), pixel_values=pixels, is_focal=torch.tensor([True, True]))
    with pytest.raises(ValueError, match="placeholders and pixel_values"):
        collate_training_batch([(ids, labels, pixels, torch.tensor([True, True]))])
