"""Building SAM 2.1 models: config names and aliases, hydra instantiation at any input size, strict checkpoints.

torch, hydra, omegaconf, sam2 and safetensors are imported inside the functions that need them: importing
dam_model.segmentation stays cheap for callers that only use the region-grow fallback or the frame rule.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    import torch

# Canonical SAM 2.1 config names -> (hydra config inside the sam2 package, accepted aliases).
_SAM21_CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", ("tiny", "t", "hiera_t", "hiera_tiny", "sam2.1_hiera_tiny")),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", ("small", "s", "hiera_s", "hiera_small", "sam2.1_hiera_small")),
    "sam2.1_hiera_b+": (
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        ("base_plus", "base+", "b+", "hiera_b+", "hiera_base_plus", "sam2.1_hiera_base_plus", "sam2.1_hiera_b_plus"),
    ),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", ("large", "l", "hiera_l", "hiera_large", "sam2.1_hiera_large")),
}
_ALIASES: dict[str, str] = {}
for _canonical, (_path, _aliases) in _SAM21_CONFIGS.items():
    _ALIASES[_canonical] = _canonical
    for _alias in _aliases:
        _ALIASES[_alias] = _canonical

_BUILD_LOCK = threading.Lock()  # hydra's global config store is not thread-safe


def download_sam2(model_id: str) -> tuple[str, Path]:
    """(canonical config name, local checkpoint path) of a SAM 2.1 hub id, e.g. "facebook/sam2.1-hiera-large".

    sam2's own hub table (sam2.build_sam.HF_MODEL_ID_TO_FILENAMES: id -> config, checkpoint file) names the files,
    and huggingface_hub.hf_hub_download fetches the checkpoint into the HF cache (HF_HOME), the call sam2's
    build_sam2_hf makes. Once cached, HF_HUB_OFFLINE=1 loads it with no network. We do not call build_sam2_hf
    itself: it builds the image-only SAM2Base with a non-strict loader, and one SAM2VideoPredictor here serves
    images and videos (build_sam2_model).
    """
    import huggingface_hub  # deferred: optional, only hub ids need it
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES  # deferred: heavy, optional

    known = sorted(k for k, (config, _) in HF_MODEL_ID_TO_FILENAMES.items() if "sam2.1" in config)
    if model_id not in known:
        raise ValueError(f"unknown SAM 2.1 hub id {model_id!r}; sam2 knows: {', '.join(known)}")
    config_path, filename = HF_MODEL_ID_TO_FILENAMES[model_id]
    canonical, _ = resolve_config(config_path)
    return canonical, Path(huggingface_hub.hf_hub_download(repo_id=model_id, filename=filename))


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the architecture named by the config."""


def valid_config_names() -> list[str]:
    """Canonical config names followed by every accepted alias."""
    return sorted(_SAM21_CONFIGS) + sorted(a for a in _ALIASES if a not in _SAM21_CONFIGS)


def resolve_config(config_name: str) -> tuple[str, str]:
    """Map a user-facing name to (canonical name, hydra config path).

    Accepts "sam2.1_hiera_t", "tiny", "sam2.1_hiera_base_plus", "facebook/sam2.1-hiera-large",
    "configs/sam2.1/sam2.1_hiera_s.yaml". Raises ValueError listing valid names otherwise.
    """
    key = str(config_name).strip().lower()
    key = key.removeprefix("facebook/").removeprefix("configs/sam2.1/").removesuffix(".yaml").replace("-", "_")
    canonical = _ALIASES.get(key)
    if canonical is None:
        raise ValueError(f"unknown SAM 2 config {config_name!r}; valid names: {', '.join(valid_config_names())}")
    return canonical, _SAM21_CONFIGS[canonical][0]


def _has_sam2_cuda_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401  (deferred probe: sam2's optional compiled connected-components kernel)
    except ImportError:
        return False
    return True


def build_sam2_model(
    config_name: str = "sam2.1_hiera_t",
    checkpoint: Optional[Union[str, Path]] = None,
    device: "str | torch.device" = "cpu",
    image_size: Optional[int] = None,
    seed: int = 0,
) -> "torch.nn.Module":
    """Instantiate a SAM2VideoPredictor (a SAM2Base, so it also serves single images) in eval mode.

    checkpoint None gives RANDOM weights (seeded by `seed`): for tests and benchmarks only.
    image_size overrides the model input size S (default 1024 from the config); it must be a multiple of 32.
    The memory-attention RoPE grid is resized to S/16 with it, and the state-dict keys and shapes do not
    depend on S, so a real checkpoint also loads at a reduced size (with a reduced-quality result).
    """
    import torch  # deferred: heavy, optional (only SAM 2 users need torch, hydra, omegaconf and sam2)
    from hydra import compose, initialize_config_module  # deferred: optional
    from hydra.core.global_hydra import GlobalHydra  # deferred: optional
    from hydra.utils import instantiate  # deferred: optional
    from omegaconf import OmegaConf  # deferred: optional

    import sam2  # noqa: F401  (deferred: heavy, optional; importing sam2 registers its hydra config module)

    canonical, config_path = resolve_config(config_name)
    overrides = [
        "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
        # the post-processing settings of sam2's own builders (build_sam2 / build_sam2_video_predictor)
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
        "++model.binarize_mask_from_pts_for_mem_enc=true",
        # hole filling needs sam2's optional CUDA kernel; without it sam2 warns on every frame
        f"++model.fill_hole_area={8 if _has_sam2_cuda_extension() else 0}",
    ]
    if image_size is not None:
        if int(image_size) != image_size or image_size % 32 or not 64 <= image_size <= 2048:
            raise ValueError(f"image_size must be a multiple of 32 in [64, 2048], got {image_size}")
        grid = int(image_size) // 16  # stride-16 feature map that memory attention's RoPE covers
        overrides += [
            f"++model.image_size={int(image_size)}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
        ]
    with _BUILD_LOCK:
        if not GlobalHydra.instance().is_initialized():
            initialize_config_module("sam2", version_base="1.2")
        cfg = compose(config_name=config_path, overrides=overrides)
        OmegaConf.resolve(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_checkpoint_strict(model, checkpoint)
    model.sam2_config_name = canonical  # for logs and provenance
    return model.to(torch.device(device)).eval()


def load_checkpoint_strict(model: "torch.nn.Module", checkpoint: Union[str, Path]) -> None:
    """Load a SAM 2 checkpoint (.pt with a "model" dict, a bare state dict, or .safetensors) strictly.

    Raises FileNotFoundError for a missing file and CheckpointMismatchError listing missing keys,
    unexpected keys and shape mismatches (sam2's own loader also refuses them, but only via torch's
    generic error after logging; this one names the keys in the exception).
    """
    import torch  # deferred: heavy, optional (see build_sam2_model)

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # deferred: only for .safetensors checkpoints

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} does not hold a state dict (got {type(state).__name__})")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:

        def listing(title: str, items: list[str]) -> str:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            return f"{title} ({len(items)}): {shown}"

        parts = [listing(t, i) for t, i in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched)) if i]
        config = getattr(model, "sam2_config_name", "the config")
        raise CheckpointMismatchError(f"checkpoint {path.name} does not match {config}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
