"""TrainConfig validation and round trip; the learning-rate schedule."""
import pytest

from dam_model.train import TrainConfig, lr_factor


@pytest.mark.parametrize("bad", [
    {"lr": 0}, {"max_steps": 0}, {"max_steps": None}, {"batch_size": 0}, {"grad_accum_steps": 0},
    {"dtype": "float16"}, {"default_prompt_fraction": 1.5}, {"keep_last": 0}, {"warmup_steps": -1},
    {"train_llm": False, "train_projector": False, "train_context_provider": False, "train_mask_embedding": False},
    {"adam_betas": (0.9, 1.0)}, {"out_dir": ""},
])
def test_invalid_config_raises(tmp_path, bad):
    fields = {"out_dir": str(tmp_path), "max_steps": 5, **bad}
    with pytest.raises(ValueError):
        TrainConfig(**fields)


def test_round_trip_and_unknown_keys(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=7, lora_rank=4, adam_betas=[0.8, 0.9])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1.0})


def test_schedule_warmup_then_cosine(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg, 100) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 100) == pytest.approx(1.0)
    assert lr_factor(10, cfg, 100) == pytest.approx(1.0)
    assert lr_factor(100, cfg, 100) == pytest.approx(0.1)
    values = [lr_factor(s, cfg, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
