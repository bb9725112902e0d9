"""Serving's hot paths as single traced calls: a Llama decode step, an unpadded prefill, the focal-region encoder.

Why: a decode step of the tiny model is ~60 small torch calls, each of which releases and re-takes the GIL. In the
server, request threads run Python between those calls, so the decode thread waits for the GIL after nearly every op
(up to the 5 ms switch interval each time): measured on 2 cores, a step took 3x longer under 8 annotators than alone,
and beside a Python busy loop an eager session step ran 2 times a second against 1200 alone. A traced step hands the
GIL over far fewer times and drops transformers' per-module overhead. It still takes the GIL inside the call once
for every tensor handed to it, and the caller's frees of the tensors it returns hand the GIL over once each (gdb on
PyEval_SaveThread/RestoreThread: 16 per step of the tiny model with a cache tensor per layer in and out): the step
therefore works on dam_model/packed_rows.PackedRows, three tensors it changes in place, and returns one of them.

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
    """forward(state, kv, out) -> out, every tensor changed in place (see PackedRows for the layouts): `steps`
    greedy tokens for every row, the first fed the row's last token at its next position; each writes its keys and
    values into the cache column `state[:, 2]` and attends to the columns its row's mask marks. Everything the steps
    do is in here: one call from Python."""

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

    def attend(self, layer: Any, hidden: torch.Tensor, cos, sin, cache) -> tuple[torch.Tensor, Any]:
        """One decoder layer over hidden [B, T, H]. cache(k, v) -> (keys, values, mask or None) stores the new keys
        and values and hands back what the T tokens attend to (None: causal over the T tokens alone)."""
        rows, length = hidden.shape[0], hidden.shape[1]
        attn = layer.self_attn
        x = self._rms(layer.input_layernorm, hidden)
        q = attn.q_proj(x).view(rows, length, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        keys, values, allowed = cache(k, v)
        if self.groups > 1:
            keys = keys.repeat_interleave(self.groups, dim=1)
            values = values.repeat_interleave(self.groups, dim=1)
        if allowed is None:
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=attn.scaling)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, scale=attn.scaling)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, length, -1))
        x = self._rms(layer.post_attention_layernorm, hidden)
        mlp = layer.mlp
        return hidden + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)), (k, v)

    def choose(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy token and its log-probability from the last position of hidden [B, T, H]."""
        logits = self.lm_head(self._rms(self.norm, hidden[:, -1:, :]))[:, -1, :].float()
        chosen = torch.argmax(logits, dim=-1)
        return chosen, torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)

    def forward(self, state, kv, out):
        for step in range(self.steps):  # unrolled by the trace
            column = state[:1, 2]  # [1]: where this token's keys and values go, the same for every row
            mask = state[:, 3:]
            mask.index_fill_(1, column, 1)  # the new token sees every real token of its row, itself included
            allowed = mask.bool()[:, None, None, :]
            hidden = self.embed(state[:, :1])  # [B, 1, H]
            cos, sin = self.rotary(state[:, 1:2], hidden.dtype)
            for index, layer in enumerate(self.layers):
                keys, values = kv[2 * index], kv[2 * index + 1]

                def cache(k, v, keys=keys, values=values):
                    keys.index_copy_(2, column, k)
                    values.index_copy_(2, column, v)
                    return keys, values, allowed

                hidden, _ = self.attend(layer, hidden, cos, sin, cache)
            chosen, logprob = self.choose(hidden)
            state[:, 0].copy_(chosen)
            state[:, 1:3].add_(1)
            out[:, step].copy_(chosen)
            out[:, self.steps + step].copy_(logprob)
        return out


class _Prefill(torch.nn.Module):
    """forward(inputs_embeds [B, T, H]) -> (greedy tokens [B], log-probabilities [B], keys and values
    [2 * layers, B, kv_heads, T, head_dim]: layer i's keys at 2i, its values at 2i + 1): the prompt of rows without
    padding (all T tokens real), positions 0..T-1, causal attention."""

    def __init__(self, step: _Step) -> None:
        super().__init__()
        self.step = step

    def forward(self, embeds):
        rows, length = embeds.shape[0], embeds.shape[1]
        positions = torch.arange(length, device=embeds.device)[None, :].expand(rows, length)
        cos, sin = self.step.rotary(positions, embeds.dtype)
        hidden, made = embeds, []
        for layer in self.step.layers:
            hidden, (k, v) = self.step.attend(layer, hidden, cos, sin, lambda k, v: (k, v, None))
            made += [k, v]
        chosen, logprobs = self.step.choose(hidden)
        return chosen, logprobs, torch.stack(made)


class LeanStep:
    """The traced step and prefill of one LLM (see the module docstring); call it like `_Step.forward` on a
    dam_model.packed_rows.PackedRows' tensors, and `prefill` like `_Prefill.forward`."""

    def __init__(self, llm: Any, tokens_per_call: int = 1) -> None:
        if tokens_per_call < 1:
            raise ValueError(f"tokens_per_call must be >= 1, got {tokens_per_call}")
        self.tokens_per_call = tokens_per_call
        self.module = _Step(llm, tokens_per_call).eval()
        self._step = _TracedOnce(self.module, _example_inputs)
        self._prefill = _TracedOnce(_Prefill(self.module), lambda embeds: (embeds.new_zeros(2, 3, embeds.shape[-1]),))

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor):
        return self._prefill(embeds)

    @torch.inference_mode()
    def __call__(self, state: torch.Tensor, kv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._step(state, kv, out)


def _example_inputs(state: torch.Tensor, kv: torch.Tensor, out: torch.Tensor) -> tuple:
    """Two rows, 3 tokens written into a cache with room for one call (tracing runs the step, which writes into its
    inputs): sizes are symbolic in the trace, tests run others."""
    rows, length = 2, 3
    capacity = length + out.shape[1] // 2
    example_state = state.new_zeros(rows, 3 + capacity)
    example_state[:, 1:3] = length
    example_state[:, 3:3 + length] = 1
    example_kv = kv.new_zeros(kv.shape[0], rows, kv.shape[2], capacity, kv.shape[4])
    return example_state, example_kv, out.new_zeros(rows, out.shape[1])


class _TracedOnce:
    """`module` traced at its first call, on example(*inputs) (inputs of other sizes than the caller's: sizes stay
    symbolic in the trace), once whichever of several threads makes that call."""

    def __init__(self, module: torch.nn.Module, example) -> None:
        self.module, self.example = module.eval(), example
        self._traced = None
        self._tracing = threading.Lock()  # request threads, the prepare-ahead thread and the model thread

    def __call__(self, *inputs):
        if self._traced is None:
            with self._tracing:
                if self._traced is None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice and tracer warnings
                        self._traced = torch.jit.trace(self.module, self.example(*inputs), check_trace=False)
        return self._traced(*inputs)


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
        self._encode = _TracedOnce(_FocalEncode(model), lambda pixels: (
            torch.zeros_like(pixels[:1]).expand(2, -1, -1, -1).contiguous(),))

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._encode(pixels)
