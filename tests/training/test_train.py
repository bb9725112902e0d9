"""End-to-end training mechanics on a tiny DAM: checkpoints, resume, loss masking, LoRA merge, overfitting."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from dam_model.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID
from dam_model.train import (
    TRAINER_STATE,
    RegionData,
    TrainConfig,
    find_resume_checkpoint,
    list_checkpoints,
    train,
)

OFFICIAL_PARTS = ("llm", "vision_tower", "mm_projector", "context_provider")


def _cfg(out_dir, **overrides):
    fields = dict(out_dir=str(out_dir), max_steps=8, batch_size=2, lr=3e-3, warmup_steps=2, log_every=1,
                  checkpoint_every=5, keep_last=3, num_threads=2, progress=False, seed=3, train_vision=True)
    fields.update(overrides)
    return TrainConfig(**fields)


def _losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["last_loss"] for r in rows if "last_loss" in r}


class _Killed(Exception):
    pass


def test_checkpoint_resume_replays_uninterrupted_run(tmp_path, tiny_samples, make_model, capsys):
    straight = tmp_path / "straight"
    train(_cfg(straight), tiny_samples, init_model=make_model())
    expected = _losses(straight)
    assert sorted(expected) == list(range(1, 9))

    interrupted = tmp_path / "interrupted"

    def kill_after_six(step, loss):
        if step == 6:
            raise _Killed

    with pytest.raises(_Killed):
        train(_cfg(interrupted), tiny_samples, init_model=make_model(), on_step=kill_after_six)
    checkpoint = interrupted / "checkpoints" / "step-00000005"
    assert [step for step, _ in list_checkpoints(interrupted)] == [5]
    assert (checkpoint / "config.json").is_file()
    for part in OFFICIAL_PARTS:
        assert (checkpoint / part / "config.json").is_file(), part
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=False)
    assert state["step"] == 5
    assert state["optimizer"]["state"], "optimizer moments must be saved"
    assert state["scheduler"]["last_epoch"] == 5
    assert state["config"]["max_steps"] == 8

    capsys.readouterr()
    final = train(_cfg(interrupted), tiny_samples, init_model=make_model())
    assert "at step 5" in capsys.readouterr().out
    resumed = _losses(interrupted)
    assert sorted(resumed) == list(range(1, 9))  # step 6 of the killed run was dropped and replayed
    for step in range(6, 9):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert resumed[6] != pytest.approx(resumed[5])  # a real sequence, not a constant
    for name in ("config.json", "train_config.json", "metrics.json", "provenance.json"):
        assert (final / name).is_file(), name


def test_resume_needs_the_optimizer_state(tmp_path, tiny_samples, make_model):
    """Guard for the test above: the same checkpoint with its Adam moments wiped replays differently."""
    straight = tmp_path / "straight"
    train(_cfg(straight), tiny_samples, init_model=make_model())
    expected = _losses(straight)
    wiped = tmp_path / "wiped"
    (wiped / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-00000005", wiped / "checkpoints" / "step-00000005")
    state_path = wiped / "checkpoints" / "step-00000005" / TRAINER_STATE
    state = torch.load(state_path, weights_only=False)
    state["optimizer"]["state"] = {}
    torch.save(state, state_path)
    train(_cfg(wiped), tiny_samples, init_model=make_model())
    replayed = _losses(wiped)
    assert replayed[6] == pytest.approx(expected[6], rel=1e-6)  # same weights at step 5
    assert replayed[7] != pytest.approx(expected[7], rel=1e-6)  # but a different update without the moments


def test_resume_auto_picks_newest_complete_checkpoint(tmp_path, tiny_samples, make_model, capsys):
    out = tmp_path / "run"
    train(_cfg(out, max_steps=4, checkpoint_every=2), tiny_samples, init_model=make_model())
    root = out / "checkpoints"
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    # a half-written temp folder of a later step and a folder without trainer_state must be ignored
    shutil.copytree(root / "step-00000004", root / ".tmp-step-00000006.123.456")
    half = root / "step-00000008"
    shutil.copytree(root / "step-00000004", half)
    (half / TRAINER_STATE).unlink()
    assert find_resume_checkpoint(_cfg(out)) == root / "step-00000004"
    assert find_resume_checkpoint(_cfg(out, resume="none")) is None
    capsys.readouterr()
    train(_cfg(out, max_steps=6, checkpoint_every=2), tiny_samples, init_model=make_model())
    assert "at step 4" in capsys.readouterr().out
    assert [s for s, _ in list_checkpoints(out)][-1] == 6


def test_labels_cover_caption_tokens_only(tmp_path, tiny_samples, tiny_tokenizer):
    cfg = _cfg(tmp_path, batch_size=4, default_prompt_fraction=0.0)
    data = RegionData(tiny_samples, tiny_tokenizer, 56, cfg)
    examples = data.examples(step=0, micro=0)
    batch = data.collate(examples)
    ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (4, 8, 56, 56)
    for row, (_, query, answer) in enumerate(examples):
        supervised = (labels[row] != IGNORE_INDEX).nonzero().flatten()
        # supervised positions: one contiguous run at the end of the real tokens (answer + </s>)
        length = int(attention[row].sum())
        assert supervised.tolist() == list(range(length - len(supervised), length))
        assert torch.equal(labels[row, supervised], ids[row, supervised])
        assert int(ids[row, length - 1]) == tiny_tokenizer.eos_token_id
        decoded = tiny_tokenizer.decode(ids[row, supervised[:-1]].tolist())
        assert decoded.strip() == answer.strip()
        prompt = ids[row, : length - len(supervised)]
        assert (prompt == IMAGE_TOKEN_ID).sum() == 1
        assert query.startswith("<image>\n")
        assert query.replace("<image>", "").strip() in tiny_tokenizer.decode([t for t in prompt.tolist() if t >= 0])
        assert (labels[row, length:] == IGNORE_INDEX).all()  # padding is never supervised


def test_loss_ignores_prompt_labels(tmp_path, tiny_samples, tiny_tokenizer, make_model):
    """Loss is the caption loss: replacing every unsupervised label by a real token id changes it."""
    model = make_model().eval()
    data = RegionData(tiny_samples, tiny_tokenizer, 56, _cfg(tmp_path, batch_size=3))
    batch = data.batch(0, 0)
    with torch.no_grad():
        loss = model(**batch).loss
        poisoned = dict(batch, labels=torch.where(batch["labels"] == IGNORE_INDEX, 5, batch["labels"]))
        poisoned["labels"] = torch.where(batch["input_ids"] == IMAGE_TOKEN_ID, IGNORE_INDEX, poisoned["labels"])
        assert model(**poisoned).loss != pytest.approx(float(loss))


def test_lora_run_saves_merged_plain_checkpoint(tmp_path, tiny_samples, make_model, capsys):
    from dam_model.modeling import DescribeAnythingModel

    init = make_model()
    init_state = {k: v.clone() for k, v in init.state_dict().items()}
    cfg = _cfg(tmp_path / "lora", max_steps=4, lora_rank=4, lora_alpha=8, train_projector=False,
               train_context_provider=False, train_vision=False, train_mask_embedding=False, checkpoint_every=2)
    final = train(cfg, tiny_samples, init_model=init)
    loaded = DescribeAnythingModel.from_pretrained(str(final), device="cpu", dtype=torch.float32)
    state = loaded.state_dict()
    assert not [k for k in state if "lora" in k or "base_layer" in k]
    assert set(state) == set(init_state)
    changed = [k for k in state if not torch.equal(state[k], init_state[k])]
    assert changed and all(k.startswith("llm.") and k.rsplit(".", 2)[-2] in cfg.lora_target_modules
                           for k in changed), changed
    # resume from a LoRA checkpoint restores the unmerged adapters
    resumed = train(TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 6}), tiny_samples, init_model=make_model())
    assert "at step 4" in capsys.readouterr().out
    again = DescribeAnythingModel.from_pretrained(str(resumed), device="cpu", dtype=torch.float32).state_dict()
    assert any(not torch.equal(again[k], state[k]) for k in changed)


def test_overfits_one_fixed_batch(tmp_path, tiny_samples, make_model):
    out = tmp_path / "overfit"
    samples = tiny_samples[:2]
    train(_cfg(out, max_steps=30, batch_size=2, lr=5e-3, warmup_steps=0, min_lr_ratio=1.0,
               default_prompt_fraction=1.0, checkpoint_every=0), samples, init_model=make_model())
    losses = _losses(out)
    assert losses[30] < 0.35 * losses[1], (losses[1], losses[30])
