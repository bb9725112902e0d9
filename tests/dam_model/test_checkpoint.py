"""Official layout: save -> load round trip, strict keys, sharding, atomic writes, hub-id resolution."""
from __future__ import annotations

import json
import os

import pytest
import torch

from dam_model.checkpoint import CheckpointKeyError, resolve_checkpoint
from dam_model.modeling import DescribeAnythingModel


def logits_of(model, tokenizer_ids, pixels, is_focal):
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer_ids]), pixel_values=pixels, is_focal=is_focal).logits


@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-dam"
    tiny_model.save_pretrained(path)
    return path


def test_save_writes_the_official_layout(saved):
    root = json.loads((saved / "config.json").read_text())
    assert root["model_type"] == "llava_llama" and root["architectures"] == ["LlavaLlamaModel"]
    for key in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg", "context_provider_cfg"):
        assert isinstance(root[key], dict)
    for sub in ("llm", "vision_tower", "mm_projector", "context_provider"):
        assert (saved / sub / "config.json").is_file() and (saved / sub / "model.safetensors").is_file()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (saved / "llm" / name).is_file(), name
    assert (saved / "vision_tower" / "preprocessor_config.json").is_file()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_round_trip_identical_logits(tiny_model, saved, tokenizer, scene):
    from dam_model.focal import preprocess_regions
    from dam_model.prompt import encode_query

    loaded = DescribeAnythingModel.from_pretrained(saved, device="cpu")
    assert loaded.dtype == torch.float32 and loaded.tokenizer is not None
    batch = preprocess_regions(scene[0][0], scene[1][0][:1], 56)
    ids = encode_query(tokenizer, tiny_model.config.image_query)
    diff = (logits_of(tiny_model, ids, batch.pixel_values, batch.is_focal)
            - logits_of(loaded, ids, batch.pixel_values, batch.is_focal)).abs().max()
    assert diff < 1e-5
    def without_dtypes(d):
        return {k: without_dtypes(v) if isinstance(v, dict) else v for k, v in d.items()
                if k not in ("torch_dtype", "model_dtype")}

    assert without_dtypes(loaded.config.to_official_dict()) == without_dtypes(tiny_model.config.to_official_dict())


def test_parity_fixture_round_trip_keeps_files_loadable(parity_model, tmp_path):
    """Re-saving official weights keeps every key (incl. the unused last adapter, post_layernorm and head)."""
    from safetensors.torch import load_file

    out = parity_model.save_pretrained(tmp_path / "resaved")
    original = load_file(str(parity_model.source_path + "/vision_tower/model.safetensors"))
    again = load_file(os.path.join(out, "vision_tower", "model.safetensors"))
    assert set(original) == set(again)
    assert all(torch.equal(original[k], again[k]) for k in original)
    assert (tmp_path / "resaved" / "llm" / "tokenizer.model").read_bytes() == \
        open(parity_model.source_path + "/llm/tokenizer.model", "rb").read()


def _rewrite(folder, component, edit):
    from safetensors.torch import load_file, save_file

    path = folder / component / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_missing_key_fails_loudly(saved, tmp_path):
    import shutil

    broken = tmp_path / "missing"
    shutil.copytree(saved, broken)
    _rewrite(broken, "context_provider", lambda t: t.pop("context_provider_module.layers.2.mlp_factor"))
    with pytest.raises(CheckpointKeyError, match=r"missing keys: context_provider_module\.layers\.2\.mlp_factor"):
        DescribeAnythingModel.from_pretrained(broken, device="cpu")


def test_extra_key_fails_loudly(saved, tmp_path):
    import shutil

    broken = tmp_path / "extra"
    shutil.copytree(saved, broken)
    _rewrite(broken, "mm_projector", lambda t: t.__setitem__("layers.3.weight", torch.zeros(2)))
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys: layers\.3\.weight"):
        DescribeAnythingModel.from_pretrained(broken, device="cpu")


def test_shape_mismatch_fails_loudly(saved, tmp_path):
    import shutil

    broken = tmp_path / "shape"
    shutil.copytree(saved, broken)
    _rewrite(broken, "mm_projector", lambda t: t.__setitem__("layers.4.bias", torch.zeros(3)))
    with pytest.raises(CheckpointKeyError, match=r"shape mismatches: layers\.4\.bias"):
        DescribeAnythingModel.from_pretrained(broken, device="cpu")


def test_sharded_save_loads_back(tiny_model, tmp_path, tokenizer):
    from dam_model.prompt import encode_query

    path = tiny_model.save_pretrained(tmp_path / "sharded", max_shard_bytes=100_000)
    index = json.loads(open(os.path.join(path, "llm", "model.safetensors.index.json")).read())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all(os.path.isfile(os.path.join(path, "llm", s)) for s in shards)
    loaded = DescribeAnythingModel.from_pretrained(path, device="cpu")
    ids = torch.tensor([encode_query(tokenizer, "Describe it.")])
    with torch.no_grad():
        assert torch.equal(tiny_model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_save_over_existing_folder_replaces_it(tiny_model, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    tiny_model.save_pretrained(target)
    assert not (target / "stale.txt").exists() and (target / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_hub_ids_only_for_org_name_that_does_not_exist(monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(repo_id)
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_checkpoint("nvidia/DAM-3B") == tmp_path
    assert calls == ["nvidia/DAM-3B"]
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint("not-a-hub-id")
    local = tmp_path / "org"
    (local / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("org/name").resolve() == (local / "name").resolve()  # an existing folder wins
    assert calls == ["nvidia/DAM-3B"]
