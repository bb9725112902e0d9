"""Official DAM checkpoint layout: strict loading and atomic saving.

Layout (as written by the release's LlavaMetaModel.save_pretrained):
    config.json                    root llava_llama config, sub-configs inlined (llm_cfg, vision_tower_cfg, ...)
    llm/                           Llama weights (safetensors, sharded with model.safetensors.index.json when big),
                                   config.json, generation_config.json, tokenizer files
    vision_tower/                  SigLIP + mask embedding (`vision_model.*`), config.json, preprocessor_config.json
    mm_projector/                  `layers.1/2/4.*`, config.json
    context_provider/              `context_provider_module.layers.N.*`, config.json
Every key in the files must match a parameter of the model and vice versa (CheckpointKeyError lists the
differences); unused official weights (last adapter, post_layernorm, SigLIP head) are real parameters here,
so they load and save back unchanged.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from .config import DAMConfig
from .fileio import atomic_replace_dir
from .tokenizer import TOKENIZER_FILES, load_tokenizer

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # as transformers' default "5GB"
COMPONENTS = ("llm", "vision_tower", "mm_projector", "context_provider")
CONFIG_KEYS = {"llm": "llm_cfg", "vision_tower": "vision_tower_cfg", "mm_projector": "mm_projector_cfg",
               "context_provider": "context_provider_cfg"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointKeyError(ValueError):
    """Missing, unexpected or mis-shaped weights in a checkpoint (strict loading)."""


def _list(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def resolve_checkpoint(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder, or a hub id "org/name" (only when no such local path exists) fetched by snapshot_download."""
    path = Path(path_or_hub_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"checkpoint path {path} is not a folder")
        return path
    text = str(path_or_hub_id)
    if HUB_ID.match(text):
        from huggingface_hub import snapshot_download  # deferred: only hub ids need it (network client)

        return Path(snapshot_download(repo_id=text))
    raise FileNotFoundError(f"checkpoint folder {path} does not exist (and it is not a hub id 'org/name')")


def read_safetensors_folder(folder: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a component folder: model.safetensors, or the shards named in model.safetensors.index.json."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            loaded = load_file(str(folder / shard), device=str(device))
            for key, value in loaded.items():
                if weight_map.get(key) != shard:
                    raise CheckpointKeyError(f"{folder.name}: tensor {key} in {shard} is not listed there by the index")
                tensors[key] = value
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise CheckpointKeyError(f"{folder.name}: index lists tensors absent from the shards: {_list(absent)}")
        return tensors
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return load_file(str(single), device=str(device))
    if any(folder.glob("*.bin")):
        raise ValueError(f"{folder}: only safetensors weights are supported (found .bin files)")
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME}")


def expected_keys(model, component: str) -> dict[str, torch.Size]:
    """Parameter names and shapes a component's weight files must hold (tied lm_head excluded)."""
    state = getattr(model, component).state_dict()
    if component == "llm" and model.config.llm.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.shape for k, v in state.items()}


def check_keys(component: str, expected: dict[str, torch.Size], found: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointKeyError listing missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k} {tuple(found[k].shape)} != {tuple(expected[k])}"
                    for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_list(shapes)}")
    if problems:
        raise CheckpointKeyError(f"{component}: " + "; ".join(problems))


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def reset_rotary(model, device: torch.device) -> None:
    """Re-create the LLM's rotary table (a non-persistent fp32 buffer: not in checkpoints, left empty by meta builds)."""
    model.llm.model.rotary_emb = LlamaRotaryEmbedding(config=model.llm.config, device=device)


def load_pretrained(cls, path_or_hub_id: str | os.PathLike, device: str | torch.device | None = None,
                    dtype: torch.dtype | str | None = None):
    """Build `cls` from the root config.json on the meta device and assign the checkpoint's tensors strictly."""
    folder = resolve_checkpoint(path_or_hub_id)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a DAM checkpoint folder)")
    name = str(path_or_hub_id) if not Path(path_or_hub_id).exists() else Path(path_or_hub_id).resolve().name
    config = DAMConfig.from_official_dict(json.loads(config_path.read_text()), checkpoint_name=name)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _as_dtype(dtype) or default_dtype(device)

    with torch.device("meta"):
        model = cls(config)
    for component in COMPONENTS:
        sub = folder / component
        if not sub.is_dir():
            raise FileNotFoundError(f"{folder}: missing sub-folder {component}/")
        tensors = read_safetensors_folder(sub, device=device if device.type == "cuda" else "cpu")
        check_keys(component, expected_keys(model, component), tensors)
        tensors = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                   for k, v in tensors.items()}
        getattr(model, component).load_state_dict(tensors, strict=not (component == "llm"
                                                                         and config.llm.tie_word_embeddings),
                                                  assign=True)
    if config.llm.tie_word_embeddings:
        model.llm.tie_weights()
    reset_rotary(model, device)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointKeyError(f"tensors not set by the checkpoint: {_list(leftovers)}")
    model.eval()
    model.source_path = str(folder)
    try:
        model.tokenizer = load_tokenizer(folder)
    except FileNotFoundError:
        model.tokenizer = None  # weights-only folder: describe() will ask for a tokenizer
    return model


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_state_dict(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write tensors as model.safetensors, or as numbered shards plus model.safetensors.index.json when larger
    than max_shard_bytes (bytes of tensor data per shard)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total <= max_shard_bytes:
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    _write_json(folder / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _preprocessor_config(size: int) -> dict[str, Any]:
    return {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"height": size, "width": size}}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def save_pretrained(model, directory: str | os.PathLike, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> str:
    """Write `model` in the official layout: into a temp folder beside `directory`, then renamed into place
    (an existing folder is moved aside first and removed only after the new one is in place)."""
    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        config = model.config
        dtype_name = _dtype_name(model.dtype)
        root = config.to_official_dict()
        root["model_dtype"] = f"torch.{dtype_name}"
        for component in COMPONENTS:
            sub = tmp / component
            sub.mkdir()
            sub_cfg = dict(root[CONFIG_KEYS[component]])
            sub_cfg["torch_dtype"] = dtype_name
            root[CONFIG_KEYS[component]]["torch_dtype"] = dtype_name
            _write_json(sub / "config.json", sub_cfg)
            state = getattr(model, component).state_dict()
            if component == "llm" and config.llm.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            save_state_dict(state, sub, max_shard_bytes)
        _write_json(tmp / "config.json", root)
        _write_json(tmp / "vision_tower" / "preprocessor_config.json", _preprocessor_config(config.vision.image_size))
        _write_json(tmp / "llm" / "generation_config.json", {
            "bos_token_id": config.llm.bos_token_id, "eos_token_id": config.llm.eos_token_id,
            "pad_token_id": config.llm.pad_token_id})
        _save_tokenizer(model, tmp / "llm")
        atomic_replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def _save_tokenizer(model, llm_folder: Path) -> None:
    """Copy the source checkpoint's tokenizer files (byte-identical), else let the tokenizer write its own."""
    source = Path(model.source_path) / "llm" if getattr(model, "source_path", None) else None
    if source is not None and (source / "tokenizer.model").is_file():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, llm_folder / name)
        return
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(llm_folder))
