"""Localized vision backbone: SigLIP with a mask patch embedding, and the gated cross-attention adapters.

Module and parameter names mirror the official state dicts (vision_tower/: `vision_model.*`;
context_provider/: `context_provider_module.layers.N.*`), so weights load with strict key checking.
One SigLIP parameter set serves both passes:
- global pass: full image + mask, no adapters; features = hidden_states[select] (layer -2), all tokens;
- focal pass: crop + crop mask, adapter l after every SigLIP layer l; keys/values = the global features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ContextProviderConfig, VisionConfig


def activation(name: str):
    """The activation functions named in the configs."""
    if name == "gelu_pytorch_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name in ("silu", "swish"):
        return F.silu
    raise ValueError(f"unsupported activation {name!r}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention, no mask. q [B, Nq, D], k/v [B, Nk, D] -> [B, Nq, D]; scale head_dim^-0.5."""
    b, nq, d = q.shape
    nk = k.shape[1]
    hd = d // heads
    q = q.view(b, nq, heads, hd).transpose(1, 2)
    k = k.view(b, nk, heads, hd).transpose(1, 2)
    v = v.view(b, nk, heads, hd).transpose(1, 2)
    # SDPA kernels keep the softmax statistics in fp32 also for bf16/fp16 inputs (the release's fp32 softmax)
    out = F.scaled_dot_product_attention(q, k, v, scale=hd**-0.5)
    return out.transpose(1, 2).reshape(b, nq, d)


class SiglipAttention(nn.Module):
    """Self-attention (keys `self_attn.{q,k,v,out}_proj`)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class CrossAttention(SiglipAttention):
    """Cross-attention (keys `cross_attn.{q,k,v,out}_proj`): queries from x, keys/values from the context."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.out_proj(attention(self.q_proj(x), self.k_proj(context), self.v_proj(context), self.heads))


class MLP(nn.Module):
    """fc1 -> activation -> fc2 (keys `mlp.fc1`, `mlp.fc2`)."""

    def __init__(self, hidden: int, intermediate: int, act: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(LN1(x)), then x + mlp(LN2(x))."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.self_attn = SiglipAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    """RGB patch conv + mask patch conv (zero-initialised, with bias), summed, then + position embedding."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        p, d = cfg.patch_size, cfg.hidden_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, d, kernel_size=p, stride=p)
        self.mask_patch_embedding = nn.Conv2d(cfg.num_mask_channels, d, kernel_size=p, stride=p)
        self.position_embedding = nn.Embedding(cfg.num_patches, d)
        self.num_channels = cfg.num_channels
        nn.init.zeros_(self.mask_patch_embedding.weight)
        nn.init.zeros_(self.mask_patch_embedding.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, C + mask channels, S, S] -> [B, grid^2, D]."""
        dtype = self.patch_embedding.weight.dtype
        rgb, mask = pixels[:, :self.num_channels].to(dtype), pixels[:, self.num_channels:].to(dtype)
        patches = self.patch_embedding(rgb) + self.mask_patch_embedding(mask)
        patches = patches.flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight[None]


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class SiglipPoolingHead(nn.Module):
    """SigLIP's attention-pooling head: unused by DAM, kept so official checkpoints load strictly and round-trip."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.attention = nn.MultiheadAttention(cfg.hidden_size, cfg.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # unused by DAM (loaded)
        self.head = SiglipPoolingHead(cfg)  # unused by DAM (loaded)


class VisionTower(nn.Module):
    """The `vision_tower/` component: state-dict keys `vision_model.*`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = SiglipVisionTransformer(cfg)

    def forward(self, pixels: torch.Tensor, num_layers: int | None = None, adapters: "ContextProvider | None" = None,
                context: torch.Tensor | None = None, output_hidden_states: bool = False):
        """Run SigLIP on [B, 4, S, S] (RGB + mask).

        num_layers: how many encoder layers to run (default all); adapters/context: run adapter l after layer l
        with keys/values = context [B, N, D] (focal pass). Returns the last computed hidden state [B, N, D], or
        the list [embeddings, after layer 0, ...] when output_hidden_states.
        """
        layers = self.vision_model.encoder.layers
        num_layers = len(layers) if num_layers is None else num_layers
        if (adapters is None) != (context is None):
            raise ValueError("adapters and context must be given together")
        h = self.vision_model.embeddings(pixels)
        states = [h] if output_hidden_states else None
        for index in range(num_layers):
            h = layers[index](h)
            if adapters is not None:
                h = adapters.layer(index, h, context)
            if states is not None:
                states.append(h)
        return states if output_hidden_states else h


class ContextProviderLayer(nn.Module):
    """Adapter l: h + g(a) * CrossAttn(LN1(h), z), then h + g(b) * MLP(LN2(h)); g = identity (release) or tanh."""

    def __init__(self, cfg: ContextProviderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.cross_attn = CrossAttention(d, cfg.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = MLP(d, cfg.intermediate_size, cfg.hidden_act)
        self.layer_norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        # Zero-initialised gates: at init the focal pass is plain SigLIP on the crop.
        self.attn_factor = nn.Parameter(torch.zeros(1))
        self.mlp_factor = nn.Parameter(torch.zeros(1))
        self.tanh_gates = cfg.gate_style == "tanh"

    def _gate(self, factor: torch.Tensor) -> torch.Tensor:
        return torch.tanh(factor) if self.tanh_gates else factor

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """h [B, N, D] focal tokens, context [B, M, D] un-normalised global features -> [B, N, D]."""
        h = h + self._gate(self.attn_factor) * self.cross_attn(self.layer_norm1(h), context)
        return h + self._gate(self.mlp_factor) * self.mlp(self.layer_norm2(h))


class ContextProviderModule(nn.Module):
    def __init__(self, cfg: ContextProviderConfig):
        super().__init__()
        self.layers = nn.ModuleList(ContextProviderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class ContextProvider(nn.Module):
    """The `context_provider/` component: state-dict keys `context_provider_module.layers.N.*`."""

    def __init__(self, cfg: ContextProviderConfig):
        super().__init__()
        self.config = cfg
        self.context_provider_module = ContextProviderModule(cfg)

    def layer(self, index: int, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.context_provider_module.layers[index](h, context)


def init_vision_weights(module: nn.Module, std: float = 0.02) -> None:
    """Random init for fresh (untrained) models; keeps the zero-initialised mask embedding and gates at zero."""
    for name, param in module.named_parameters():
        if name.endswith("mask_patch_embedding.weight") or name.endswith("mask_patch_embedding.bias") \
                or name.endswith("_factor"):
            nn.init.zeros_(param)
        elif "norm" in name.split(".")[-2] and name.endswith("weight"):
            nn.init.ones_(param)
        elif name.endswith("bias"):
            nn.init.zeros_(param)
        elif param.dim() >= 2:
            fan_in = math.prod(param.shape[1:])
            nn.init.normal_(param, std=min(std, fan_in**-0.5) if "position" not in name else std)
        else:
            nn.init.normal_(param, std=std)
