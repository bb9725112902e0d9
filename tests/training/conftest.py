"""Shared fixtures of the training tests: a tiny tokenizer, tiny synthetic samples and a seeded tiny DAM factory."""
from __future__ import annotations

import os

# With 2 cores shared by many processes, OpenMP's default spin-waiting makes every op wait for a descheduled
# thread (measured: 25 s vs 0.9 s for 10 tiny steps). Only effective if torch was not imported before this file.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_samples():
    """Regions of four 64x64 synthetic scenes (long + short captions)."""
    from dam_model.train import synthetic_training_samples

    return synthetic_training_samples(seed=5, n_scenes=4, size=(64, 64))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_samples, tmp_path_factory):
    """A 360-piece sentencepiece tokenizer trained on the captions and the augmented prompts."""
    from dam_model.augment import prompt_vocabulary_texts
    from dam_model.prompt import build_prompt
    from dam_model.tokenizer import load_tokenizer, train_tokenizer

    texts = [s.caption for s in tiny_samples] + [s.short_caption for s in tiny_samples]
    texts += prompt_vocabulary_texts() + [build_prompt("Describe the masked region in detail.")]
    return load_tokenizer(train_tokenizer(texts, 360, tmp_path_factory.mktemp("tok")))


@pytest.fixture
def make_model(tiny_tokenizer):
    """Factory: the same randomly initialised tiny DAM every call (seeded)."""
    from dam_model.config import DAMConfig
    from dam_model.modeling import DescribeAnythingModel

    def factory():
        torch.manual_seed(0)
        return DescribeAnythingModel.from_config(DAMConfig.tiny(vocab_size=len(tiny_tokenizer)), tokenizer=tiny_tokenizer)

    return factory
