"""SAM 2.1 by hub id (facebook/sam2.1-hiera-*): the backend, the nightly's pseudo-labelling and the segmenter accept it.
The hub is mocked at its boundary (huggingface_hub.hf_hub_download), which hands back a random-weight checkpoint;
the real download is the opt-in test in test_sam2_real_weights.py (SAM2_REAL_MODEL=<hub id>)."""
from __future__ import annotations

import argparse

import huggingface_hub
import pytest
import torch

from backend.model_store import SegmenterStore
from backend.settings import Settings
from dam_loop.cli import BadArguments
from dam_loop.steps import pseudo_label
from dam_model.segmentation import Sam2Segmenter, build_segmenter, download_sam2

from .conftest import TEST_IMAGE_SIZE


@pytest.fixture
def hub(monkeypatch, tmp_path, sam_model):
    """hf_hub_download replaced: records its calls and returns a checkpoint of the random hiera-t."""
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sam_model.state_dict()}, checkpoint)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(checkpoint)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


def test_hub_id_names_sam2s_own_files(hub):
    config, path = download_sam2("facebook/sam2.1-hiera-tiny")
    assert config == "sam2.1_hiera_t" and path.name == "sam2.1_hiera_tiny.pt"
    assert hub == [("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")]  # sam2's HF_MODEL_ID_TO_FILENAMES


def test_unknown_or_sam2_0_ids_are_refused(hub):
    for model_id in ("facebook/sam2.1-hiera-huge", "facebook/sam2-hiera-tiny"):
        with pytest.raises(ValueError, match="facebook/sam2.1-hiera-large"):
            download_sam2(model_id)
    assert hub == []


def test_segmenter_from_hub_id_loads_the_checkpoint_strictly(hub, sam_model):
    seg = Sam2Segmenter.from_pretrained("facebook/sam2.1-hiera-tiny", device="cpu", image_size=TEST_IMAGE_SIZE)
    assert seg.image_size == TEST_IMAGE_SIZE and seg.model.sam2_config_name == "sam2.1_hiera_t"
    loaded, expected = seg.model.state_dict(), sam_model.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    seg = build_segmenter("sam2", model_id="facebook/sam2.1-hiera-tiny", device="cpu", image_size=TEST_IMAGE_SIZE)
    assert isinstance(seg, Sam2Segmenter) and len(hub) == 2


def test_backend_builds_sam2_from_the_hub_id(hub):
    settings = Settings.from_env({"SEGMENTER": "sam2", "SAM2_MODEL": "facebook/sam2.1-hiera-tiny", "DEVICE": "cpu"})
    seg = SegmenterStore(settings).get()
    assert isinstance(seg, Sam2Segmenter) and seg.model.sam2_config_name == "sam2.1_hiera_t"
    assert hub == [("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")]
    assert Settings().sam2_model == "facebook/sam2.1-hiera-large"  # the default is SAM 2.1 large, by name


def test_backend_local_checkpoint_wins_and_a_bad_id_fails_at_start(monkeypatch, hub):
    made = []
    monkeypatch.setattr(Sam2Segmenter, "from_checkpoint",
                        classmethod(lambda cls, c, p, **kw: made.append((c, p))))
    settings = Settings.from_env({"SEGMENTER": "sam2", "SAM2_CHECKPOINT": "/w/sam2.1_hiera_tiny.pt", "SAM2_CONFIG": "tiny"})
    SegmenterStore(settings).get()
    assert made == [("tiny", "/w/sam2.1_hiera_tiny.pt")] and hub == []
    with pytest.raises(ValueError, match="SAM2_MODEL"):
        Settings.from_env({"SEGMENTER": "sam2", "SAM2_MODEL": "sam2.1_hiera_large.pt"})


def test_nightly_takes_sam2_model(monkeypatch):
    monkeypatch.setenv("SAM2_MODEL", "facebook/sam2.1-hiera-large")
    for name in ("SAM2_CONFIG", "SAM2_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    pseudo_label.add_pseudo_args(parser)
    settings = pseudo_label.sam2_settings(parser.parse_args([]))
    assert settings["model"] == "facebook/sam2.1-hiera-large" and "checkpoint" not in settings
    local = pseudo_label.sam2_settings(parser.parse_args(["--sam2-config", "tiny", "--sam2-checkpoint", "x.pt"]))
    assert local["checkpoint"] == "x.pt"  # a local checkpoint wins over the hub id
    with pytest.raises(BadArguments):
        pseudo_label.sam2_settings(parser.parse_args(["--sam2-checkpoint", "x.pt"]))
