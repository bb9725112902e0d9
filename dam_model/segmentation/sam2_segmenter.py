"""SAM 2.1 as a click-to-mask service: config resolution, strict checkpoint loading, cached image embeddings.

The image encoder (the expensive part: ~1 s per 1024 px image for hiera-t on a CPU) runs once per distinct
image; every later click on that image runs only the prompt encoder and mask decoder (milliseconds).
One SAM2VideoPredictor instance serves image, automatic and video requests, so weights are held once.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Optional, Sequence, Union

import numpy as np

from .cache import CacheStats, EmbeddingCache, image_key
from .types import MaskPrediction, VideoPrompt, as_rgb_uint8, validate_prompts

if TYPE_CHECKING:  # heavy imports stay inside the functions that need them
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

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024  # ~19 hiera-t images at 1024 px (16 MiB features + 10 MiB decoder inputs)
_BUILD_LOCK = threading.Lock()  # hydra's global config store is not thread-safe


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
        from sam2 import _C  # noqa: F401  (optional compiled kernel for connected components)
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
    import torch
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import sam2  # noqa: F401  (importing sam2 registers its hydra config module)

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
            from hydra import initialize_config_module

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
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM 2 checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

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


def _as_torch_dtype(dtype: "str | torch.dtype") -> "torch.dtype":
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if str(dtype).lower() not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[str(dtype).lower()]


@dataclass(frozen=True)
class ImageEmbedding:
    """SAM 2 image features for one image (what the cache stores).

    image_embed:    [1, 256, S/16, S/16] (no-memory embedding already added, as SAM2ImagePredictor does).
    high_res_feats: [1, 32, S/4, S/4] and [1, 64, S/8, S/8] for hiera configs.
    orig_hw:        (H, W) of the original image, used to map prompts and masks.
    image_side:     the decoder's prompt-independent inputs (see fast_decoder.precompute_image_side),
                    or None when the fast decoder is off.
    """

    image_embed: "torch.Tensor"
    high_res_feats: tuple["torch.Tensor", ...]
    orig_hw: tuple[int, int]
    image_side: Optional[dict[str, "torch.Tensor"]] = None


class Sam2Segmenter:
    """Points/boxes -> masks with SAM 2.1, reusing image embeddings across clicks; video masklets; automatic masks.

    Thread-safe for concurrent `predict` calls: the model is only read, the cache is locked.
    Build with `Sam2Segmenter.from_checkpoint(...)`.
    """

    def __init__(
        self,
        model: "torch.nn.Module",
        dtype: "str | torch.dtype" = "float32",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        mask_threshold: float = 0.0,
        fast_decoder: bool = True,
    ) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.model = model
        self.dtype = _as_torch_dtype(dtype)
        self.mask_threshold = float(mask_threshold)
        # reuse the decoder's image-side work across clicks (fast_decoder.py); False = sam2's decoder every time
        self.fast_decoder = bool(fast_decoder)
        self.cache: EmbeddingCache[ImageEmbedding] = EmbeddingCache(cache_bytes)
        # sam2's own resize + ImageNet normalisation, so embeddings match SAM2ImagePredictor's
        with _quiet_jit_script():
            self._transforms = SAM2Transforms(resolution=self.image_size, mask_threshold=self.mask_threshold)
        self._counter_lock = threading.Lock()
        self._dense_pe: "Optional[torch.Tensor]" = None  # positional encoding of the S/16 grid: same for every image
        self._key_pe: "Optional[torch.Tensor]" = None  # the same, flattened to [1, hw, C]
        self.encoder_calls = 0  # image-encoder runs for single images (cache misses); tests observe it

    @classmethod
    def from_checkpoint(
        cls,
        config_name: str = "sam2.1_hiera_t",
        checkpoint: Optional[Union[str, Path]] = None,
        device: "Optional[str | torch.device]" = None,
        dtype: "str | torch.dtype" = "float32",
        image_size: Optional[int] = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        seed: int = 0,
    ) -> "Sam2Segmenter":
        """Build from a config name and a checkpoint path.

        config_name: "sam2.1_hiera_t" | "_s" | "_b+" | "_l" or an alias ("tiny", "small", "base_plus", "large", ...).
        checkpoint:  path to sam2.1_hiera_*.pt (or .safetensors); None = RANDOM weights, for tests and benchmarks only.
        device:      "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        dtype:       "float32" (default) or "bfloat16"/"float16": the weights stay float32 and the forward
                     passes run under torch.autocast in that dtype (as sam2's own demos do on GPUs).
        image_size:  model input size S override (multiple of 32), e.g. 256 for fast CPU tests; default 1024.
        cache_bytes: memory cap of the image-embedding LRU cache, in bytes of tensor payload.
        """
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_sam2_model(config_name, checkpoint, device=device, image_size=image_size, seed=seed)
        return cls(model, dtype=dtype, cache_bytes=cache_bytes)

    # ----------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Model input size S in pixels (square)."""
        return int(self.model.image_size)

    @property
    def device(self) -> "torch.device":
        return self.model.device

    @property
    def config_name(self) -> str:
        return getattr(self.model, "sam2_config_name", "unknown")

    def cache_stats(self) -> CacheStats:
        """Hits, misses, evictions, entries and bytes of the embedding cache."""
        return self.cache.stats()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context matching `dtype` (a no-op for float32)."""
        import torch

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ----------------------------------------------------------------------------------------------
    def embed(self, image: Any) -> ImageEmbedding:
        """Image embedding for `image` (HxWx3 uint8), from the cache when this image was seen before."""
        rgb = as_rgb_uint8(image)
        return self.cache.get_or_compute(image_key(rgb), lambda: self._encode(rgb))

    def _encode(self, rgb: np.ndarray) -> ImageEmbedding:
        import torch

        with self._counter_lock:
            self.encoder_calls += 1
        model = self.model
        with torch.inference_mode(), self.autocast():
            pixels = self._transforms(rgb)[None].to(self.device)
            backbone_out = model.forward_image(pixels)
            _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
            if model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
            # [HW, 1, C] -> [1, C, H, W] for each level, sizes taken from the backbone (they follow S)
            maps = [feat.permute(1, 2, 0).reshape(1, -1, h, w) for feat, (h, w) in zip(vision_feats, feat_sizes)]
            image_side = None
            if self.fast_decoder:
                from .fast_decoder import precompute_image_side

                image_side = precompute_image_side(model, maps[-1], self._image_pe())
        return ImageEmbedding(
            image_embed=maps[-1].clone(),
            high_res_feats=tuple(m.clone() for m in maps[:-1]),
            orig_hw=rgb.shape[:2],
            image_side=image_side,
        )

    def _image_pe(self) -> "torch.Tensor":
        """The decoder's dense positional encoding [1, 256, S/16, S/16], computed once (it depends only on S)."""
        if self._dense_pe is None:
            with self._counter_lock:
                if self._dense_pe is None:
                    dense_pe = self.model.sam_prompt_encoder.get_dense_pe()
                    self._key_pe = dense_pe.flatten(2).permute(0, 2, 1).contiguous()
                    self._dense_pe = dense_pe.clone()
        return self._dense_pe

    def predict(
        self,
        image: Any,
        points: Optional[Sequence] = None,
        labels: Optional[Sequence] = None,
        box: Optional[Sequence] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask: Optional[bool] = None,
    ) -> MaskPrediction:
        """Mask for one object from clicks and/or a box.

        image:      HxWx3 uint8 RGB (or PIL); its embedding is cached by content.
        points:     [N, 2] (x, y) pixels of the ORIGINAL image; labels [N]: 1 positive, 0 negative.
        box:        (x0, y0, x1, y1) pixels of the original image.
        mask_input: low-res logits of a previous prediction (`MaskPrediction.logits`, [1, S/4, S/4]) to refine.
        multimask:  None = SAM's advice: 3 candidates for a single click without a box (best by predicted IoU),
                    one mask otherwise.
        Returns MaskPrediction(mask bool [H, W], score = predicted IoU, logits float32 [1, S/4, S/4]).
        Raises ValueError for malformed prompts or points/boxes outside the image.
        """
        import torch
        import torch.nn.functional as F

        rgb = as_rgb_uint8(image)
        height, width = rgb.shape[:2]
        pts, lbl, bx = validate_prompts(height, width, points, labels, box)
        low_res = self.image_size // 4
        mask_tensor = None
        if mask_input is not None:
            mask_array = np.asarray(mask_input, dtype=np.float32)
            if mask_array.shape[-2:] != (low_res, low_res) or mask_array.size != low_res * low_res:
                raise ValueError(f"mask_input must be [1, {low_res}, {low_res}] low-res logits, got shape {mask_array.shape}")
            mask_tensor = torch.from_numpy(mask_array.reshape(1, 1, low_res, low_res)).to(self.device)
        if multimask is None:
            multimask = bx is None and pts is not None and len(pts) == 1

        embedding = self.embed(rgb)
        scale = np.array([self.image_size / width, self.image_size / height], dtype=np.float32)
        coords, codes = [], []
        if bx is not None:  # sam2 feeds a box as two corner points labelled 2 and 3, ahead of the clicks
            coords.append(bx.reshape(2, 2) * scale)
            codes.append(np.array([2, 3], dtype=np.int32))
        if pts is not None:
            coords.append(pts * scale)
            codes.append(lbl)
        point_coords = torch.from_numpy(np.concatenate(coords)[None]).to(self.device)
        point_labels = torch.from_numpy(np.concatenate(codes)[None]).to(self.device)

        model = self.model
        with torch.inference_mode(), self.autocast():
            sparse, dense = model.sam_prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=mask_tensor)
            if mask_tensor is None and embedding.image_side is not None:
                from .fast_decoder import decode

                image_pe = self._image_pe()
                low_res_masks, iou_predictions = decode(
                    model,
                    embedding.image_side,
                    self._key_pe,
                    list(embedding.high_res_feats),
                    sparse,
                    hw=tuple(image_pe.shape[-2:]),
                    multimask_output=multimask,
                )
            else:
                low_res_masks, iou_predictions, _, _ = model.sam_mask_decoder(
                    image_embeddings=embedding.image_embed,
                    image_pe=self._image_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=multimask,
                    repeat_image=False,
                    high_res_features=list(embedding.high_res_feats),
                )
            best = int(torch.argmax(iou_predictions[0]))
            logits = low_res_masks[0, best : best + 1].float().clamp(-32.0, 32.0)  # [1, S/4, S/4]
            full = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
            mask = (full > self.mask_threshold).cpu().numpy()
        return MaskPrediction(mask=mask, score=float(iou_predictions[0, best].float()), logits=logits.cpu().numpy())

    # ----------------------------------------------------------------------------------------------
    def automatic_masks(
        self,
        image: Any,
        max_masks: int = 50,
        min_area: int = 100,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
    ) -> list[MaskPrediction]:
        """"Describe everything": SAM2AutomaticMaskGenerator over a point grid, reusing the cached embedding.

        Keeps masks with at least `min_area` pixels, sorted by predicted IoU then area (both descending),
        at most `max_masks`. Thresholds are sam2's defaults (tuned for real weights; random weights need 0).
        Returned logits are empty arrays (the generator does not keep them).
        """
        import torch
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        if max_masks < 1 or min_area < 0:
            raise ValueError(f"need max_masks >= 1 and min_area >= 0, got {max_masks} and {min_area}")
        rgb = as_rgb_uint8(image)
        with _quiet_jit_script():  # the generator builds its own SAM2ImagePredictor, replaced just below
            generator = SAM2AutomaticMaskGenerator(
                self.model,
                points_per_side=points_per_side,
                points_per_batch=points_per_batch,
                pred_iou_thresh=pred_iou_thresh,
                stability_score_thresh=stability_score_thresh,
                box_nms_thresh=box_nms_thresh,
                min_mask_region_area=0,  # its hole/sprinkle cleanup needs the optional CUDA kernel; we filter by area below
                output_mode="binary_mask",
            )
        generator.predictor = _CachedImagePredictor(self)
        with torch.inference_mode(), self.autocast():
            records = generator.generate(rgb)
        kept = [r for r in records if int(r["area"]) >= min_area]
        kept.sort(key=lambda r: (float(r["predicted_iou"]), int(r["area"])), reverse=True)
        empty = np.zeros((0,), dtype=np.float32)
        return [
            MaskPrediction(mask=np.asarray(r["segmentation"], dtype=bool), score=float(r["predicted_iou"]), logits=empty)
            for r in kept[:max_masks]
        ]

    # ----------------------------------------------------------------------------------------------
    def track_video(
        self,
        frames: Any,
        prompts: Sequence["VideoPrompt | dict[str, Any]"],
        max_frames: int = 300,
        stride: int = 1,
        offload_state_to_cpu: bool = True,
        time_budget_s: Optional[float] = None,
        on_frame: Optional[Callable[[int, Hashable, str], None]] = None,
    ) -> dict[Hashable, list[np.ndarray]]:
        """Masklets for several objects from prompts on any frames; see `dam_model.segmentation.video.track_video`."""
        from .video import track_video

        return track_video(
            self,
            frames,
            prompts,
            max_frames=max_frames,
            stride=stride,
            offload_state_to_cpu=offload_state_to_cpu,
            time_budget_s=time_budget_s,
            on_frame=on_frame,
        )


_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_jit_script():
    """Silence the FutureWarning that torch.jit.script (used inside sam2's SAM2Transforms) raises on torch 2.9+."""
    import warnings

    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        yield


@functools.cache
def _cached_predictor_class() -> type:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class CachedImagePredictor(SAM2ImagePredictor):
        """SAM2ImagePredictor whose set_image reads the segmenter's embedding cache (any input size S)."""

        def __init__(self, segmenter: Sam2Segmenter) -> None:
            # no super().__init__: it would script a second SAM2Transforms; share the segmenter's instead
            self.model = segmenter.model
            self._transforms = segmenter._transforms
            self.mask_threshold = segmenter.mask_threshold
            self._segmenter = segmenter
            self.reset_predictor()

        def set_image(self, image: Any) -> None:
            self.reset_predictor()
            embedding = self._segmenter.embed(image)
            self._orig_hw = [embedding.orig_hw]
            self._features = {"image_embed": embedding.image_embed, "high_res_feats": list(embedding.high_res_feats)}
            self._is_image_set = True

    return CachedImagePredictor


def _CachedImagePredictor(segmenter: Sam2Segmenter):  # noqa: N802 - reads like a class at call sites
    return _cached_predictor_class()(segmenter)
