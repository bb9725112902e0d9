"""SAM 2.1 as a click-to-mask service with cached image embeddings (models are built by sam2_build.py).

The image encoder (the expensive part: ~1 s per 1024 px image for hiera-t on a CPU) runs once per distinct
image; every later click on that image runs only the prompt encoder and mask decoder (milliseconds).
One SAM2VideoPredictor instance serves image, automatic and video requests, so weights are held once.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Optional, Sequence, Union

import numpy as np

from .cache import CacheStats, EmbeddingCache, image_key
from .fast_decoder import decode, precompute_image_side
from .sam2_build import build_sam2_model, download_sam2
from .types import MaskPrediction, VideoPrompt, as_rgb_uint8, validate_prompts
from .video import track_video

if TYPE_CHECKING:  # torch and sam2 are imported inside the methods that need them (deferred: heavy, optional)
    import torch

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024  # ~19 hiera-t images at 1024 px (16 MiB features + 10 MiB decoder inputs)


def _as_torch_dtype(dtype: "str | torch.dtype") -> "torch.dtype":
    import torch  # deferred: heavy, optional

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
        from sam2.utils.transforms import SAM2Transforms  # deferred: heavy, optional

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
        import torch  # deferred: heavy, optional

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_sam2_model(config_name, checkpoint, device=device, image_size=image_size, seed=seed)
        return cls(model, dtype=dtype, cache_bytes=cache_bytes)

    @classmethod
    def from_pretrained(cls, model_id: str = "facebook/sam2.1-hiera-large", **kwargs: Any) -> "Sam2Segmenter":
        """Build from a SAM 2.1 hub id ("facebook/sam2.1-hiera-tiny" ... "-large"): the checkpoint is fetched into the
        Hugging Face cache on first use (sam2_build.download_sam2; HF_HUB_OFFLINE=1 afterwards). kwargs: those of
        `from_checkpoint` but config_name and checkpoint."""
        config_name, checkpoint = download_sam2(model_id)
        return cls.from_checkpoint(config_name, checkpoint, **kwargs)

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
        import torch  # deferred: heavy, optional

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # ----------------------------------------------------------------------------------------------
    def embed(self, image: Any) -> ImageEmbedding:
        """Image embedding for `image` (HxWx3 uint8), from the cache when this image was seen before."""
        rgb = as_rgb_uint8(image)
        return self.cache.get_or_compute(image_key(rgb), lambda: self._encode(rgb))

    def _encode(self, rgb: np.ndarray) -> ImageEmbedding:
        import torch  # deferred: heavy, optional

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
        import torch  # deferred: heavy, optional
        import torch.nn.functional as F  # deferred with torch

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
        import torch  # deferred: heavy, optional
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # deferred: heavy, optional

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
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        yield


@functools.cache
def _cached_predictor_class() -> type:
    from sam2.sam2_image_predictor import SAM2ImagePredictor  # deferred: heavy, optional

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
