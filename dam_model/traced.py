"""Serving's hot paths as single traced calls: a Llama decode step, an unpadded prefill, the focal-region encoder.

Why: a decode step of the tiny model is ~60 small torch calls, each of which releases and re-takes the GIL. In the
server, request threads run Python between those calls, so the decode thread waits for the GIL after nearly every op
(up to the 5 ms switch interval each time): measured on 2 cores, a step took 3x longer under 8 annotators than alone,
and beside a Python busy loop an eager session step ran 2 times a second against 1200 alone. A traced step hands the
GIL over far fewer times (23 steps/s beside that loop, 2700 alone: python scripts/bench.py concurrent) and drops
transformers' per-module overhead. Beside that loop it still takes ~45 ms a call whenever its input shapes differ from
the previous call's (the cache grows by one column every step), against ~7 ms when the shapes repeat (alone: ~0.4 ms):
the JIT's handling of new shapes hands the GIL over again and again. A preallocated cache of fixed length (written in
place, bucketed) would keep the shapes; not built yet.

Same arithmetic as the eager paths: transformers' LlamaForCausalLM (4.57: RMSNorm and rotary embedding in float32,
SDPA with an explicit mask or causal without padding, repeat_kv for grouped heads) and encode_images;
tests/dam_model/test_traced.py compares outputs, and the ids and scores of whole sessions. The LLM parts support
rope_scaling None, "default", "linear" or "llama3" (fixed inverse frequencies), SiLU MLPs and optional biases;
for anything else `unsupported_reason` says why and decoding goes through transformers' forward.
"""
from __future__ import annotations

import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F

STATIC_ROPE_TYPES = {None, "default", "linear", "llama3"}


def unsupported_reason(llm: Any) -> str | None:
    """Why `llm` cannot use the traced step and prefill, or None when it can."""
    config = getattr(llm, "config", None)
    if type(llm).__name__ != "LlamaForCausalLM" or config is None:
        return f"{type(llm).__name__} is not LlamaForCausalLM"
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope_scaling type {rope_type!r} changes with the sequence length"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (only silu)"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    if getattr(llm, "training", False):
        return "the model is in training mode"
    return None


class _Step(torch.nn.Module):
    """forward(tokens [B], positions [B, 1], mask [B, L], keys, values) -> (greedy tokens [B, n], their
    log-probabilities [B, n], mask [B, L+n], positions + n, keys, values): n = `steps` tokens per row, the first fed
    `tokens` at `positions`; mask 1 = a real token; keys/values are tuples of per-layer caches
    [B, kv_heads, L, head_dim], returned with L+n. Everything the steps do is in here: one call from Python."""

    def __init__(self, llm: Any, steps: int = 1) -> None:
        super().__init__()
        self.steps = steps
        model, config = llm.model, llm.config
        self.embed = model.embed_tokens
        self.layers = model.layers
        self.norm = model.norm
        self.lm_head = llm.lm_head
        self.register_buffer("inv_freq", model.rotary_emb.inv_freq.detach().clone(), persistent=False)
        self.attention_scaling = float(getattr(model.rotary_emb, "attention_scaling", 1.0))
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads

    @staticmethod
    def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * x.to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, T, d] of positions [B, T] (float32 as transformers' LlamaRotaryEmbedding, then dtype)."""
        freqs = positions[:, :, None].float() * self.inv_freq.float()[None, None, :]  # [B, T, d/2]
        angles = torch.cat((freqs, freqs), dim=-1)
        return ((angles.cos() * self.attention_scaling).to(dtype)[:, None],
                (angles.sin() * self.attention_scaling).to(dtype)[:, None])

    def layers_forward(self, hidden, cos, sin, keys, values, allowed):
        """hidden [B, T, H] through every decoder layer, appending to the caches; allowed: a [B, 1, T, L+T] bool
        mask, or None for causal attention over the T tokens alone (prefill without padding)."""
        rows, length = hidden.shape[0], hidden.shape[1]
        new_keys, new_values = [], []
        for layer, past_k, past_v in zip(self.layers, keys, values):
            attn = layer.self_attn
            x = self._rms(layer.input_layernorm, hidden)
            q = attn.q_proj(x).view(rows, length, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(rows, length, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(rows, length, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + self._rotate_half(q) * sin
            k = k * cos + self._rotate_half(k) * sin
            k = torch.cat((past_k, k), dim=-2)
            v = torch.cat((past_v, v), dim=-2)
            new_keys.append(k)
            new_values.append(v)
            if self.groups > 1:
                k = k.repeat_interleave(self.groups, dim=1)
                v = v.repeat_interleave(self.groups, dim=1)
            if allowed is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scaling)
            out = attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
            hidden = hidden + out
            x = self._rms(layer.post_attention_layernorm, hidden)
            mlp = layer.mlp
            hidden = hidden + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return hidden, tuple(new_keys), tuple(new_values)

    def choose(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy token and its log-probability from the last position of hidden [B, T, H]."""
        logits = self.lm_head(self._rms(self.norm, hidden[:, -1:, :]))[:, -1, :].float()
        chosen = torch.argmax(logits, dim=-1)
        return chosen, torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)

    def forward(self, tokens, positions, mask, keys, values):
        chosen, logprobs = [], []
        for _ in range(self.steps):  # unrolled by the trace
            mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
            allowed = mask.bool()[:, None, None, :]  # the new token sees every real token of its row
            hidden = self.embed(tokens[:, None])  # [B, 1, H]
            cos, sin = self.rotary(positions, hidden.dtype)
            hidden, keys, values = self.layers_forward(hidden, cos, sin, keys, values, allowed)
            tokens, logprob = self.choose(hidden)
            chosen.append(tokens)
            logprobs.append(logprob)
            positions = positions + 1
        return torch.stack(chosen, 1), torch.stack(logprobs, 1), mask, positions, keys, values


class _Prefill(torch.nn.Module):
    """forward(inputs_embeds [B, T, H]) -> (greedy tokens [B], log-probabilities [B], keys, values): the prompt of
    rows without padding (all T tokens real), positions 0..T-1, causal attention."""

    def __init__(self, step: _Step) -> None:
        super().__init__()
        self.step = step

    def forward(self, embeds):
        rows, length = embeds.shape[0], embeds.shape[1]
        positions = torch.arange(length, device=embeds.device)[None, :].expand(rows, length)
        cos, sin = self.step.rotary(positions, embeds.dtype)
        empty = embeds.new_zeros(rows, self.step.kv_heads, 0, self.step.head_dim)
        caches = tuple(empty for _ in self.step.layers)
        hidden, keys, values = self.step.layers_forward(embeds, cos, sin, caches, caches, None)
        chosen, logprobs = self.step.choose(hidden)
        return chosen, logprobs, keys, values


class LeanStep:
    """The traced step and prefill of one LLM (see the module docstring); call it like `_Step.forward`, and
    `prefill` like `_Prefill.forward`."""

    def __init__(self, llm: Any, tokens_per_call: int = 1) -> None:
        if tokens_per_call < 1:
            raise ValueError(f"tokens_per_call must be >= 1, got {tokens_per_call}")
        self.tokens_per_call = tokens_per_call
        self.module = _Step(llm, tokens_per_call).eval()
        self._traced = None
        self._prefill = None

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor):
        if self._prefill is None:
            example = embeds.new_zeros(2, 3, embeds.shape[-1])
            self._prefill = _trace(_Prefill(self.module).eval(), (example,))
        return self._prefill(embeds)

    @torch.inference_mode()
    def __call__(self, tokens, positions, mask, keys, values):
        if self._traced is None:
            # Traced on two rows and a 3-token cache: shapes are symbolic in the trace (tests run other sizes).
            self._traced = _trace(self.module, _example_inputs(self.module, tokens.device, keys[0].dtype))
        return self._traced(tokens, positions, mask, tuple(keys), tuple(values))


def _example_inputs(module: _Step, device: torch.device, dtype: torch.dtype) -> tuple:
    rows, length = 2, 3
    cache = [torch.zeros(rows, module.kv_heads, length, module.head_dim, device=device, dtype=dtype)
             for _ in module.layers]
    return (torch.zeros(rows, dtype=torch.long, device=device), torch.full((rows, 1), length, device=device),
            torch.ones(rows, length, dtype=torch.long, device=device), tuple(cache), tuple(cache))


def _trace(module: torch.nn.Module, example: tuple) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice and tracer warnings
        return torch.jit.trace(module, example, check_trace=False)


class _FocalEncode(torch.nn.Module):
    """forward(pixel_values [K, 8, S, S]) -> visual tokens [K, T, H_llm] of regions that are all focal crops: the
    same calls as DescribeAnythingModel.encode_images (global pass, focal pass with the context provider's
    cross-attention adapters, projector)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_tower, self.context_provider = model.vision_tower, model.context_provider
        self.mm_projector = model.mm_projector
        self.used = model.config.num_vision_layers_used

    def forward(self, pixels):
        features = self.vision_tower(pixels[:, :4], num_layers=self.used)
        focal = self.vision_tower(pixels[:, 4:], num_layers=self.used, adapters=self.context_provider,
                                  context=features)
        return self.mm_projector(focal.to(features.dtype))


class FocalEncoder:
    """The traced `_FocalEncode` of one DescribeAnythingModel, traced at its first call; callable from several
    threads at once."""

    def __init__(self, model: Any) -> None:
        self.module = _FocalEncode(model).eval()
        self._traced = None
        self._tracing = threading.Lock()  # request threads and the model thread may make the first call together

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._traced is None:
            with self._tracing:
                if self._traced is None:
                    example = torch.zeros_like(pixels[:1]).expand(2, -1, -1, -1).contiguous()
                    self._traced = _trace(self.module, (example,))
        return self._traced(pixels)
