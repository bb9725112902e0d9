"""Shared fixtures of the dam_model core tests: the parity fixture, its tokenizer, a seeded tiny DAM."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny models: extra threads only add contention on the shared 2-core machine

REPO_ROOT = Path(__file__).resolve().parents[2]
# The reference fixtures live in ../shared beside the repo root (or in shared/ inside a copied checkout).
FIXTURE = next((root / "shared" / "reference" / "parity" / "fixture_odd" for root in (REPO_ROOT.parent, REPO_ROOT)
                if (root / "shared" / "reference" / "parity" / "fixture_odd").is_dir()),
               REPO_ROOT.parent / "shared" / "reference" / "parity" / "fixture_odd")


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert FIXTURE.is_dir(), f"parity fixture missing at {FIXTURE}"
    return FIXTURE


@pytest.fixture(scope="session")
def expected(fixture_dir):
    return np.load(fixture_dir / "expected.npz")


@pytest.fixture(scope="session")
def fixture_cases(fixture_dir):
    return {c["name"]: c for c in json.loads((fixture_dir / "inputs" / "cases.json").read_text())["cases"]}


@pytest.fixture(scope="session")
def load_inputs(fixture_dir):
    """name -> (list of RGB uint8 frames, list of bool masks) for a fixture case dict."""
    from PIL import Image

    def load(case):
        images = [np.asarray(Image.open(fixture_dir / "inputs" / p).convert("RGB")) for p in case["images"]]
        masks = [np.asarray(Image.open(fixture_dir / "inputs" / p)) > 0 for p in case["masks"]]
        return images, masks

    return load


@pytest.fixture(scope="session")
def parity_model(fixture_dir):
    from dam_model.modeling import DescribeAnythingModel

    return DescribeAnythingModel.from_pretrained(fixture_dir / "model", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tokenizer(fixture_dir):
    from dam_model.tokenizer import load_tokenizer

    return load_tokenizer(fixture_dir / "model")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with decisive random values (like the fixture: N(0, 1/fan_in) matrices,
    norms 1 + 0.2 N, biases 0.1 N, gates +-U[0.5, 1.5)), so greedy decoding has clear winners."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            shape = param.shape
            if name.endswith("_factor"):
                value = (torch.rand(shape, generator=generator) + 0.5) * torch.sign(torch.randn(shape, generator=generator))
            elif "norm" in name and name.endswith("weight"):
                value = 1 + 0.2 * torch.randn(shape, generator=generator)
            elif name.endswith("bias"):
                value = 0.1 * torch.randn(shape, generator=generator)
            elif "embed" in name or "probe" in name:
                value = 0.5 * torch.randn(shape, generator=generator)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
                value = torch.randn(shape, generator=generator) / fan_in**0.5
            param.copy_(value)
    return model


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """DAMConfig.tiny (7x7 odd grid, 16 tokens per image) with decisive random weights and the fixture tokenizer."""
    from dam_model.config import DAMConfig
    from dam_model.modeling import DescribeAnythingModel

    model = DescribeAnythingModel.from_config(DAMConfig.tiny(vocab_size=len(tokenizer)), tokenizer=tokenizer)
    return randomize(model, seed=1).eval()


@pytest.fixture(scope="session")
def scene():
    """Two seeded images (different sizes) with region masks of varied sizes, one touching a border."""
    rng = np.random.default_rng(3)
    images, masks = [], []
    for h, w in ((160, 220), (141, 120)):
        base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        images.append(base)
        region_masks = []
        for (y0, x0, mh, mw) in ((5, 5, 8, 10), (20, 30, 40, 50), (0, w - 15, 30, 15), (h // 3, w // 4, h // 2, w // 2)):
            m = np.zeros((h, w), dtype=bool)
            m[y0:y0 + mh, x0:x0 + mw] = True
            region_masks.append(m)
        masks.append(region_masks)
    return images, masks
