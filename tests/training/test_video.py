"""Training on video tracks beside image regions: the inputs are describe_video's, the loss is forward's on them,
and a short mixed run writes checkpoints and resumes exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dam_model.augment import DEFAULT_QUERY, augment_prompt, example_rng
from dam_model.config import video_query
from dam_model.focal import preprocess_regions
from dam_model.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, build_prompt, encode_answer, tokenize_prompt
from dam_model.data import TrackSample, from_row, to_row
from dam_model.train import RegionData, TrainConfig, list_checkpoints, synthetic_video_training_samples, train

FRAMES = 2  # the tiny model's num_video_frames: few frames keep the tests fast


@pytest.fixture(scope="module")
def videos():
    """Tracks of two 6-frame 64x48 synthetic clips (long + short captions)."""
    return synthetic_video_training_samples(3, 2, num_frames=6, size=(64, 48))


@pytest.fixture
def make_video_model(tiny_tokenizer):
    from dam_model.config import DAMConfig
    from dam_model.modeling import DescribeAnythingModel

    def factory():
        torch.manual_seed(0)
        config = DAMConfig.tiny(vocab_size=len(tiny_tokenizer), num_video_frames=FRAMES)
        return DescribeAnythingModel.from_config(config, tokenizer=tiny_tokenizer)

    return factory


def _cfg(out_dir, **overrides):
    fields = dict(out_dir=str(out_dir), max_steps=3, batch_size=2, lr=3e-3, log_every=1, checkpoint_every=2,
                  keep_last=3, num_threads=2, progress=False, seed=4, train_vision=True)
    fields.update(overrides)
    return TrainConfig(**fields)


def _data(samples, model, cfg, **kwargs):
    return RegionData(samples, model.tokenizer, model.config.vision.image_size, cfg,
                      image_query=model.config.image_query, video_query=model.config.video_query, **kwargs)


def test_video_sample_accepts_rows_and_rejects_bad_ones(videos, tmp_path):
    first = videos[0]
    row = to_row(TrackSample(first.frames, first.masks, "a track"), tmp_path, "track", split="train")
    sample = from_row(row, tmp_path)
    assert isinstance(sample, TrackSample) and sample.caption == "a track" and len(sample.frames) == 6
    with pytest.raises(ValueError, match="frames but"):
        TrackSample(first.frames, first.masks[:3], "x")
    with pytest.raises(ValueError, match="every mask"):
        TrackSample(first.frames, [np.zeros_like(m) for m in first.masks], "x")
    with pytest.raises(ValueError, match="HxWx3"):
        TrackSample([f[:, :, 0] for f in first.frames], first.masks, "x")
    with pytest.raises(ValueError, match="video_query"):
        RegionData(videos, None, 56, _cfg("unused", cache_preprocessed=False))


def test_teacher_forced_video_inputs_equal_what_describe_video_feeds(videos, make_video_model, tmp_path, monkeypatch):
    model = make_video_model().eval()
    sample = videos[1]
    # Hide the object on some frames: the frame choice (select_video_frames) must skip them like describe_video.
    masks = [m if i not in (0, 3) else np.zeros_like(m) for i, m in enumerate(sample.masks)]
    sample = TrackSample(sample.frames, masks, sample.caption, sample.short_caption)
    data = _data([sample], model, _cfg(tmp_path), augment=False)
    (batch,) = list(data.eval_batches(4))

    seen = {}
    encode = model.encode_images

    def spy_encode(pixel_values, is_focal):
        seen["pixel_values"], seen["is_focal"] = pixel_values.clone(), torch.as_tensor(is_focal).clone()
        return encode(pixel_values, is_focal)

    def spy_generate(rows, visual, settings):
        seen["rows"] = rows
        return [None]

    monkeypatch.setattr(model, "encode_images", spy_encode)
    monkeypatch.setattr(model, "_generate_rows", spy_generate)
    model.describe_video(sample.frames, sample.masks)

    assert batch["pixel_values"].shape == (FRAMES, 8, 56, 56)
    assert torch.equal(batch["pixel_values"], seen["pixel_values"])
    assert torch.equal(batch["is_focal"], seen["is_focal"])
    (prompt,) = seen["rows"]
    assert sum(t == IMAGE_TOKEN_ID for t in prompt) == FRAMES
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    answer = encode_answer(model.tokenizer, sample.caption)
    assert ids == list(prompt) + answer  # the inference prompt, then the caption and </s>
    labels = batch["labels"][0][: len(ids)].tolist()
    assert labels == [IGNORE_INDEX] * len(prompt) + answer


def test_mixed_batch_loss_equals_forward_on_hand_built_inputs(tiny_samples, videos, make_video_model, tmp_path):
    model = make_video_model()
    tokenizer = model.tokenizer
    samples = [tiny_samples[0], videos[0], tiny_samples[1], videos[2]]
    cfg = _cfg(tmp_path, batch_size=4, default_prompt_fraction=0.0)  # every query augmented
    data = _data(samples, model, cfg)
    step = 1
    batch = data.batch(step, 0)
    order = data.indices(step, 0)
    assert sorted(order) == [0, 1, 2, 3]

    rows, labels, pixels, focal = [], [], [], []
    for slot, index in enumerate(order):
        sample = samples[index]
        ex = augment_prompt(sample.caption, sample.short_caption, example_rng(cfg.seed, step, slot), 0.0)
        assert ex.query != DEFAULT_QUERY
        if isinstance(sample, TrackSample):
            query = "Video: " + "<image>" * FRAMES + "\n" + ex.query  # the video prefix of video_query(FRAMES)
            assert model.config.video_query == video_query(FRAMES)
            prepared, _ = model.prepare_video(sample.frames, sample.masks)
        else:
            query = "<image>\n" + ex.query
            prepared = preprocess_regions(sample.image, [sample.mask], 56)
        prompt = tokenize_prompt(tokenizer, build_prompt(query))
        answer = encode_answer(tokenizer, ex.answer)
        rows.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
        pixels.append(prepared.pixel_values)
        focal.append(prepared.is_focal)
    longest = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    label_t = torch.tensor([lab + [IGNORE_INDEX] * (longest - len(lab)) for lab in labels])
    pixel_values = torch.cat(pixels)
    assert pixel_values.shape[0] == 2 + 2 * FRAMES  # two regions and two tracks, in row order
    assert torch.equal(batch["pixel_values"], pixel_values)
    assert torch.equal(batch["is_focal"], torch.cat(focal))
    assert torch.equal(batch["input_ids"][attention.bool()], input_ids[attention.bool()])

    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention, pixel_values=pixel_values,
                         is_focal=torch.cat(focal), labels=label_t).loss
        got = model(**batch).loss
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isfinite(got)


def _losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["last_loss"] for r in rows if "last_loss" in r}


def test_mixed_image_and_video_training_writes_checkpoints_and_resumes(tiny_samples, videos, make_video_model,
                                                                        tmp_path):
    samples = [tiny_samples[0], videos[0], tiny_samples[1], videos[1], tiny_samples[2]]
    straight = tmp_path / "straight"
    final = train(_cfg(straight), samples, samples[:2], init_model=make_video_model())
    assert [step for step, _ in list_checkpoints(straight)] == [2, 3]
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["train_samples"] == 5 and metrics["train_video_samples"] == 2
    assert np.isfinite(metrics["val_loss"])
    assert (final / "config.json").is_file() and json.loads((final / "config.json").read_text())["num_video_frames"] == 2
    expected = _losses(straight)

    class Killed(Exception):
        pass

    def kill(step, loss):
        if step == 2:
            raise Killed

    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        train(_cfg(resumed), samples, init_model=make_video_model(), on_step=kill)
    train(_cfg(resumed), samples, init_model=make_video_model())
    assert _losses(resumed)[3] == pytest.approx(expected[3], rel=1e-6)
