"""Validated configuration of a Describe Anything Model (DAM).

One `DAMConfig` holds four sub-configs (vision encoder, context provider = focal adapters, projector, LLM)
plus the prompt settings. It round-trips through the official root ``config.json`` (``llava_llama`` layout,
sub-configs inlined as ``vision_tower_cfg``, ``context_provider_cfg``, ``mm_projector_cfg``, ``llm_cfg``):
keys this code does not model are kept in ``extra`` dicts and written back unchanged, so a saved checkpoint
stays loadable by the official code.

Our own additions to the official files (all optional, official defaults when absent):
- ``context_provider_cfg["gate_style"]``: ``"linear"`` (release code: h + a * f(h)) or ``"tanh"`` (paper: h + tanh(a) * f(h)).
- root ``"dam_image_query"`` / ``"dam_video_query"``: the user-turn texts (with ``<image>`` placeholders).

Query selection rule (documented in `default_image_query`): an explicit ``dam_image_query`` wins; otherwise a
checkpoint whose name contains "video" (the joint DAM-3B-Video checkpoint) gets the joint image prompt
``"Image: <image>\\nGiven the image above, describe the object in the masked region."``; otherwise the DAM-3B prompt
``"<image>\\nDescribe the masked region in detail."``. The video query is the release's 8-frame prompt, with the
number of ``<image>`` placeholders following ``num_video_frames``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

GATE_STYLES = ("linear", "tanh")
PROMPT_MODES = ("full+focal_crop",)
PROJECTOR_TYPES = ("mlp_downsample",)

IMAGE_QUERY_DAM3B = "<image>\nDescribe the masked region in detail."
IMAGE_QUERY_JOINT = "Image: <image>\nGiven the image above, describe the object in the masked region."
VIDEO_QUERY_SUFFIX = "\nGiven the video in the form of a sequence of frames above, describe the object in the masked region in the video in detail."


def video_query(num_frames: int = 8) -> str:
    """The release's video user turn: "Video: " + "<image>" x num_frames + the instruction."""
    return "Video: " + "<image>" * num_frames + VIDEO_QUERY_SUFFIX


def default_image_query(checkpoint_name: str | None) -> str:
    """Image query for a checkpoint without an explicit one: the joint video checkpoint (name contains "video")
    was trained with a different image prompt than DAM-3B."""
    if checkpoint_name and "video" in checkpoint_name.lower():
        return IMAGE_QUERY_JOINT
    return IMAGE_QUERY_DAM3B


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")


def _split_known(cls: type, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an official sub-config dict into the fields `cls` models and the rest (kept verbatim)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in d.items() if k in names}
    extra = {k: v for k, v in d.items() if k not in names}
    return known, extra


@dataclass
class VisionConfig:
    """SigLIP vision encoder with a mask patch embedding (official `vision_tower_cfg`)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 384  # pixels, square; grid = image_size // patch_size
    num_channels: int = 3
    num_mask_channels: int = 1
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_positive(self, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "patch_size", "image_size", "num_channels", "num_mask_channels")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"vision hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.image_size < self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} smaller than patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Patches per side (the valid convolution drops the remainder pixels)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        d = copy.deepcopy(self.extra)
        d.setdefault("architectures", ["SiglipVisionModel"])
        d["model_type"] = "siglip_vision_model"
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        known, extra = _split_known(cls, d)
        return cls(**known, extra=extra)


# Options of the release's context provider that this implementation fixes to these values (written to
# fresh configs so the official loader finds them).
RELEASE_CONTEXT_PROVIDER_DEFAULTS: dict[str, Any] = {
    "attention_dropout": 0.0, "residual_dropout": 0.0, "context_image_as_queries": False,
    "context_provider_layer_indices": None, "masked_cross_attn": False, "treat_image_as_cimage": False,
    "crop_embedding_mode": "add", "crop_position_single_embedding": False, "trainable_crop_position_embedding": True,
    "num_channels": 3, "num_mask_channels": 1,
}


@dataclass
class ContextProviderConfig:
    """Gated cross-attention adapters run after every SigLIP layer in the focal pass (`context_provider_cfg`)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    context_provider_type: str = "cross_attn_end_to_all"
    zero_init_output: bool = True
    gate_style: str = "linear"  # "linear" = release code (raw factor), "tanh" = paper
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_positive(self, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"adapter hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.gate_style not in GATE_STYLES:
            raise ValueError(f"gate_style must be one of {GATE_STYLES}, got {self.gate_style!r}")
        if self.context_provider_type != "cross_attn_end_to_all":
            raise ValueError(f"unsupported context_provider_type {self.context_provider_type!r} (only cross_attn_end_to_all)")
        if self.extra.get("context_provider_layer_indices") is not None:
            raise ValueError("context_provider_layer_indices is not supported (the release uses None)")
        for flag in ("context_image_as_queries", "masked_cross_attn", "treat_image_as_cimage"):
            if self.extra.get(flag):
                raise ValueError(f"context provider option {flag}=True is not supported (the release uses False)")

    def to_dict(self) -> dict[str, Any]:
        d = copy.deepcopy(self.extra)
        d.setdefault("architectures", ["ContextProvider"])
        d["model_type"] = "context_provider"
        for key, value in RELEASE_CONTEXT_PROVIDER_DEFAULTS.items():  # what the official loader reads
            d.setdefault(key, value)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        if self.gate_style == "linear":
            d.pop("gate_style")  # keep official files byte-for-byte familiar; linear is the official default
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContextProviderConfig":
        known, extra = _split_known(cls, d)
        return cls(**known, extra=extra)


@dataclass
class ProjectorConfig:
    """Vision-to-language projector (`mm_projector_cfg`); only the release's mlp_downsample."""

    mm_projector_type: str = "mlp_downsample"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mm_projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"mm_projector_type must be one of {PROJECTOR_TYPES}, got {self.mm_projector_type!r}")

    def to_dict(self) -> dict[str, Any]:
        d = copy.deepcopy(self.extra)
        d.setdefault("architectures", ["MultimodalProjector"])
        d["model_type"] = "v2l_projector"
        d["mm_projector_type"] = self.mm_projector_type
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProjectorConfig":
        known, extra = _split_known(cls, d)
        return cls(**known, extra=extra)


@dataclass
class LLMConfig:
    """Llama-style causal LM (`llm_cfg`), built with transformers' LlamaForCausalLM."""

    vocab_size: int = 32000
    hidden_size: int = 2560
    intermediate_size: int = 6912
    num_hidden_layers: int = 32
    num_attention_heads: int = 20
    num_key_value_heads: int = 20
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check_positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"llm hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("llm num_attention_heads must be a multiple of num_key_value_heads")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"llm {name}={value} outside the vocabulary [0, {self.vocab_size})")

    def to_dict(self) -> dict[str, Any]:
        d = copy.deepcopy(self.extra)
        d.setdefault("architectures", ["LlamaForCausalLM"])
        d["model_type"] = "llama"
        d.setdefault("model_max_length", None)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LLMConfig":
        known, extra = _split_known(cls, d)
        return cls(**known, extra=extra)

    def to_llama_config(self):
        """A transformers LlamaConfig with these dimensions (no download)."""
        from transformers import LlamaConfig

        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        head_dim = self.extra.get("head_dim")
        if head_dim is not None:
            kwargs["head_dim"] = head_dim
        return LlamaConfig(**kwargs)


@dataclass
class DAMConfig:
    """Whole-model configuration; `to_official_dict` / `from_official_dict` map it to the root config.json."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    context_provider: ContextProviderConfig = field(default_factory=ContextProviderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    prompt_mode: str = "full+focal_crop"
    mm_vision_select_layer: int = -2
    num_video_frames: int = 8
    conv_mode: str = "v1"
    image_query: str = IMAGE_QUERY_DAM3B
    video_query: str = field(default_factory=video_query)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if self.conv_mode != "v1":
            raise ValueError(f"only the vicuna_v1 conversation template ('v1') is supported, got {self.conv_mode!r}")
        n = self.vision.num_hidden_layers
        if not -n <= self.mm_vision_select_layer < 0:
            raise ValueError(f"mm_vision_select_layer must be in [-{n}, -1], got {self.mm_vision_select_layer}")
        _check_positive(self, "num_video_frames")
        if self.context_provider.hidden_size != self.vision.hidden_size:
            raise ValueError("context_provider.hidden_size must equal vision.hidden_size")
        if self.context_provider.num_hidden_layers != self.vision.num_hidden_layers:
            raise ValueError("context provider needs one adapter per vision layer (num_hidden_layers must match)")
        if self.image_query.count("<image>") != 1:
            raise ValueError("image_query must contain exactly one <image> placeholder")
        if self.video_query.count("<image>") != self.num_video_frames:
            raise ValueError(f"video_query must contain num_video_frames={self.num_video_frames} <image> placeholders")

    # -- derived sizes --------------------------------------------------------------------------------------
    @property
    def merged_grid_size(self) -> int:
        """Tokens per side after the 2x2 downsampling (odd grids are zero-padded)."""
        return (self.vision.grid_size + 1) // 2

    @property
    def tokens_per_image(self) -> int:
        """Visual tokens spliced per image or video frame (196 for DAM-3B)."""
        return self.merged_grid_size**2

    @property
    def num_vision_layers_used(self) -> int:
        """SigLIP layers needed to produce the selected hidden state (hidden_states[select] = output of this many layers)."""
        return self.vision.num_hidden_layers + 1 + self.mm_vision_select_layer

    # -- presets -------------------------------------------------------------------------------------------
    @classmethod
    def dam_3b(cls, **overrides: Any) -> "DAMConfig":
        """The official nvidia/DAM-3B dimensions (SigLIP so400m-384, 27 adapters, Sheared-LLaMA-2.7B)."""
        return cls(**overrides)

    @classmethod
    def tiny(
        cls,
        *,
        vocab_size: int = 448,
        image_size: int = 56,
        patch_size: int = 8,
        vision_hidden_size: int = 32,
        vision_intermediate_size: int = 37,
        vision_layers: int = 3,
        vision_heads: int = 2,
        adapter_intermediate_size: int = 29,
        llm_hidden_size: int = 64,
        llm_intermediate_size: int = 96,
        llm_layers: int = 2,
        llm_heads: int = 4,
        llm_kv_heads: int | None = None,
        max_position_embeddings: int = 1024,
        gate_style: str = "linear",
        num_video_frames: int = 8,
        **overrides: Any,
    ) -> "DAMConfig":
        """A small model for tests and toy training; the default is a 7x7 (odd) patch grid -> 16 tokens per image."""
        vision = VisionConfig(hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              patch_size=patch_size, image_size=image_size)
        adapters = ContextProviderConfig(hidden_size=vision_hidden_size, intermediate_size=adapter_intermediate_size,
                                         num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                                         gate_style=gate_style)
        llm = LLMConfig(vocab_size=vocab_size, hidden_size=llm_hidden_size, intermediate_size=llm_intermediate_size,
                        num_hidden_layers=llm_layers, num_attention_heads=llm_heads,
                        num_key_value_heads=llm_kv_heads or llm_heads, max_position_embeddings=max_position_embeddings)
        overrides.setdefault("video_query", video_query(num_video_frames))
        return cls(vision=vision, context_provider=adapters, llm=llm, num_video_frames=num_video_frames, **overrides)

    # -- official config.json ------------------------------------------------------------------------------
    def to_official_dict(self) -> dict[str, Any]:
        """The root config.json of the official layout (sub-configs inlined)."""
        d = copy.deepcopy(self.extra)
        d.update({
            "architectures": ["LlavaLlamaModel"],
            "model_type": "llava_llama",
            "llm_cfg": self.llm.to_dict(),
            "vision_tower_cfg": self.vision.to_dict(),
            "mm_projector_cfg": self.projector.to_dict(),
            "context_provider_cfg": {"image_size": self.vision.image_size, "patch_size": self.vision.patch_size,
                                     **self.context_provider.to_dict()},
            "mask_encoder_cfg": d.get("mask_encoder_cfg"),
            "hidden_size": self.llm.hidden_size,
            "mm_hidden_size": self.vision.hidden_size,
            "mm_projector_type": self.projector.mm_projector_type,
            "mm_vision_select_layer": self.mm_vision_select_layer,
            "mm_vision_select_feature": "cls_patch",
            "image_aspect_ratio": "resize",
            "num_video_frames": self.num_video_frames,
        })
        d.setdefault("mm_use_im_start_end", False)
        d.setdefault("mm_use_im_patch_token", False)
        if self.image_query != IMAGE_QUERY_DAM3B or "dam_image_query" in self.extra:
            d["dam_image_query"] = self.image_query
        if self.video_query != video_query(self.num_video_frames) or "dam_video_query" in self.extra:
            d["dam_video_query"] = self.video_query
        return d

    @classmethod
    def from_official_dict(cls, d: dict[str, Any], checkpoint_name: str | None = None) -> "DAMConfig":
        """Parse a root config.json dict; `checkpoint_name` (folder or hub id) picks the default image query."""
        for key in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg", "context_provider_cfg"):
            if not isinstance(d.get(key), dict):
                raise ValueError(f"config.json lacks the inlined sub-config {key!r} (not an official DAM checkpoint?)")
        if d.get("mm_vision_select_feature", "cls_patch") != "cls_patch":
            raise ValueError(f"unsupported mm_vision_select_feature {d['mm_vision_select_feature']!r}")
        if d.get("image_aspect_ratio", "resize") != "resize":
            raise ValueError(f"unsupported image_aspect_ratio {d['image_aspect_ratio']!r}")
        if d.get("mm_use_im_start_end"):
            raise ValueError("mm_use_im_start_end=True is not supported (DAM uses no image start/end tokens)")
        projector = dict(d["mm_projector_cfg"])
        projector.setdefault("mm_projector_type", d.get("mm_projector_type", "mlp_downsample"))
        num_frames = int(d.get("num_video_frames") or 8)
        extra = {k: v for k, v in d.items() if k not in {
            "llm_cfg", "vision_tower_cfg", "mm_projector_cfg", "context_provider_cfg", "num_video_frames",
            "mm_vision_select_layer"}}
        return cls(
            vision=VisionConfig.from_dict(d["vision_tower_cfg"]),
            context_provider=ContextProviderConfig.from_dict(d["context_provider_cfg"]),
            projector=ProjectorConfig.from_dict(projector),
            llm=LLMConfig.from_dict(d["llm_cfg"]),
            mm_vision_select_layer=int(d.get("mm_vision_select_layer", -2)),
            num_video_frames=num_frames,
            image_query=d.get("dam_image_query") or default_image_query(checkpoint_name),
            video_query=d.get("dam_video_query") or video_query(num_frames),
            extra=extra,
        )
