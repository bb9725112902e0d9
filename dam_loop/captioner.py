"""The captioning model as the steps use it (pseudo_label, evaluate): a model folder loaded once, in eval mode."""
from __future__ import annotations

from pathlib import Path

import torch

from dam_model.modeling import DescribeAnythingModel


def load_model(model_dir: str | Path, device: str = "auto") -> DescribeAnythingModel:
    """The DAM of ``model_dir`` (a folder or a hub id) on ``device`` ("auto": CUDA when available, else CPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DescribeAnythingModel.from_pretrained(str(model_dir), device=device)
    model.eval()
    return model
