"""Batched decoding over the LLM with a KV cache: greedy or nucleus sampling, EOS stopping, streaming, confidence.

The loop feeds the spliced prompt embeddings once (prefill, left padding for batches), then one token per step
through transformers' DynamicCache. Per row it records the chosen ids and their log-probabilities under the
model's own distribution (log-softmax of the raw logits, i.e. temperature 1); a caption's confidence is the mean
of those over its emitted tokens, </s> included when emitted (always <= 0).

Finished rows stop costing work: once a row has emitted </s>, it is dropped from the batch before the next step
(its KV cache rows, mask and position go with it: `DynamicCache.batch_select_indices`), so a batch whose captions
have mixed lengths does not decode padding for the rows that are done. Greedy results are unchanged (the surviving
rows see exactly the inputs they saw before; tests compare token ids with and without compaction and with one-by-one
decoding). Seeded sampling stays reproducible for the same inputs, but its draws depend on which rows are still in
the batch, so sampled texts differ from a run with compaction off. `DecodeStats` counts the row-steps saved.

Continuous batching (rows joining a running decode between two steps) lives in dam_model/continuous.py; the
serving scheduler uses it (backend/sessions.py). This module keeps the one-call batched decode.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

RELEASE_TEMPERATURE = 0.2  # release default (sampling); temperature 0 here means greedy
RELEASE_TOP_P = 0.5
RELEASE_MAX_NEW_TOKENS = 512

_step_hook = threading.local()  # per thread: the callback run between decode steps (see `between_steps`)


@dataclass
class Caption:
    """One description: text (special tokens removed, stripped), confidence = mean token log-probability (<= 0),
    token_ids = generated ids (without the final </s>)."""

    text: str
    confidence: float
    token_ids: list[int] = field(default_factory=list)


@dataclass
class DecodeStats:
    """Work of one decode. steps: LLM calls after the prefill; row_steps: rows fed over those calls;
    finished_row_steps: rows fed that had already emitted </s> (padding work, 0 with compaction);
    saved_row_steps: row-steps compaction skipped (what the batch would have fed without it); compactions: shrinks."""

    steps: int = 0
    row_steps: int = 0
    finished_row_steps: int = 0
    saved_row_steps: int = 0
    compactions: int = 0


@dataclass
class GenerationSettings:
    """Decoding options. temperature 0 = greedy (deterministic); > 0 = sampling with nucleus top_p."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = RELEASE_TOP_P
    seed: int | None = None
    stop_at_eos: bool = True
    compact_finished: bool = True
    """Drop rows that emitted </s> from the batch (and the KV cache) before the next decode step."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one); [B, V] -> [B, V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_tokens(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    """Next ids [B] from last-position logits [B, V]."""
    if settings.temperature == 0:
        return torch.argmax(logits, dim=-1)
    scaled = nucleus_filter(logits.float() / settings.temperature, settings.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@contextmanager
def between_steps(callback: Callable[[], None] | None) -> Iterator[None]:
    """Within the block, every decode THIS thread runs calls `callback()` between two steps (None: no callback).

    The serving scheduler uses it to serve a waiting click between two steps of a bulk batch (backend/batching.py),
    so the click waits one decode step instead of the whole batch. The callback runs with no hook installed: a
    decode it starts itself runs to its end. The paused decode keeps its KV cache and resumes unchanged.
    """
    previous = getattr(_step_hook, "callback", None)
    _step_hook.callback = callback
    try:
        yield
    finally:
        _step_hook.callback = previous


def _run_step_hook() -> None:
    callback = getattr(_step_hook, "callback", None)
    if callback is None:
        return
    _step_hook.callback = None
    try:
        callback()
    finally:
        _step_hook.callback = callback


@torch.inference_mode()
def decode_steps(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
                 eos_token_id: int, pad_token_id: int = 0,
                 stats: DecodeStats | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (ids [B], logprobs [B], alive [B] bool) per step; rows are left-padded: inputs_embeds [B, T, H],
    attention_mask [B, T] (1 = real token). A row stops after emitting </s> when settings.stop_at_eos; a stopped
    row yields pad_token_id and logprob 0 from then on (and, with settings.compact_finished, costs no more work)."""
    from transformers import DynamicCache  # deferred: transformers is heavy and only needed once decoding starts

    device = inputs_embeds.device
    generator = None
    if settings.seed is not None and settings.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    rows = inputs_embeds.shape[0]
    mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = llm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
              use_cache=True, logits_to_keep=1)
    active = torch.arange(rows, device=device)  # the original row of each row still in the batch
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    next_position = positions[:, -1:] + 1
    for step in range(settings.max_new_tokens):
        logits = out.logits[:, -1, :].float()
        batch_ids = choose_tokens(logits, settings, generator)
        batch_logprobs = torch.log_softmax(logits, dim=-1).gather(1, batch_ids[:, None]).squeeze(1)
        batch_alive = alive[active]
        batch_ids = torch.where(batch_alive, batch_ids, torch.full_like(batch_ids, pad_token_id))
        ids = torch.full((rows,), pad_token_id, dtype=batch_ids.dtype, device=device).index_copy(0, active, batch_ids)
        logprobs = torch.zeros(rows, dtype=batch_logprobs.dtype, device=device).index_copy(0, active, batch_logprobs)
        yield ids, logprobs, alive.clone()
        if settings.stop_at_eos:
            batch_alive = batch_alive & (batch_ids != eos_token_id)
            alive = alive.index_copy(0, active, batch_alive)
        if not bool(batch_alive.any()) or step == settings.max_new_tokens - 1:
            return
        if settings.compact_finished and not bool(batch_alive.all()):
            keep = torch.nonzero(batch_alive).flatten()
            cache.batch_select_indices(keep)
            mask, next_position, active, batch_ids = mask[keep], next_position[keep], active[keep], batch_ids[keep]
            batch_alive = batch_alive[keep]
            if stats is not None:
                stats.compactions += 1
        _run_step_hook()
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = llm(input_ids=batch_ids[:, None], attention_mask=mask, position_ids=next_position, past_key_values=cache,
                  use_cache=True)
        next_position = next_position + 1
        if stats is not None:
            fed = int(active.shape[0])
            stats.steps += 1
            stats.row_steps += fed
            stats.finished_row_steps += fed - int(batch_alive.sum())
            stats.saved_row_steps += rows - fed


def generate(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
             eos_token_id: int, pad_token_id: int = 0,
             stats: DecodeStats | None = None) -> tuple[list[list[int]], list[float]]:
    """Run `decode_steps` to the end: per row the emitted ids (</s> included when emitted) and mean log-probability."""
    rows = inputs_embeds.shape[0]
    ids: list[list[int]] = [[] for _ in range(rows)]
    logprob_sums = [0.0] * rows
    for step_ids, step_logprobs, alive in decode_steps(llm, inputs_embeds, attention_mask, settings, eos_token_id,
                                                       pad_token_id, stats):
        step_ids, step_logprobs, alive = step_ids.tolist(), step_logprobs.tolist(), alive.tolist()
        for row in range(rows):
            if alive[row]:
                ids[row].append(step_ids[row])
                logprob_sums[row] += step_logprobs[row]
    means = [logprob_sums[r] / max(len(ids[r]), 1) for r in range(rows)]
    return ids, means


def decode_text(tokenizer, ids: list[int]) -> str:
    """`tokenizer.decode(ids, skip_special_tokens=True)` without the slow tokenizer's per-token Python: that decode
    rebuilds the special-token list for every token (~0.3 ms a caption on the tiny model, in the decode thread).
    For a sentencepiece tokenizer whose only added tokens are special ones, the pieces left after dropping special
    ids are exactly what it hands to sentencepiece; anything else takes `tokenizer.decode` (equal text after
    strip(): tests/dam_model/test_traced.py)."""
    decode = tokenizer.__dict__.get("_dam_decode_text")
    if decode is None:
        decode = tokenizer.__dict__["_dam_decode_text"] = _sentencepiece_decoder(tokenizer) or (
            lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    return decode(ids)


def _sentencepiece_decoder(tokenizer):
    model = getattr(tokenizer, "sp_model", None)
    if model is None or not hasattr(tokenizer, "added_tokens_decoder"):
        return None
    special = set(tokenizer.all_special_ids)
    if any(i not in special for i in tokenizer.added_tokens_decoder):
        return None  # plain added tokens are decoded apart from sentencepiece's pieces
    size, slow = model.get_piece_size(), tokenizer.decode
    clean = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))

    def decode(ids: list[int]) -> str:
        kept = [i for i in ids if i not in special]
        if any(i < 0 or i >= size for i in kept):
            return slow(ids, skip_special_tokens=True)
        text = model.decode(kept)
        return tokenizer.clean_up_tokenization(text) if clean else text

    return decode


def make_caption(tokenizer, ids: list[int], mean_logprob: float, eos_token_id: int) -> Caption:
    """Caption from emitted ids: drop the trailing </s>, decode without special tokens, strip (as the release)."""
    kept = ids[:-1] if ids and ids[-1] == eos_token_id else list(ids)
    text = decode_text(tokenizer, kept).strip()
    return Caption(text=text, confidence=float(min(mean_logprob, 0.0)), token_ids=kept)


class TextStreamer:
    """Turns a growing id list into text deltas whose concatenation is the final caption text.

    A delta is only released when it is stable: trailing whitespace and incomplete UTF-8 (U+FFFD) wait for
    the next token, because sentencepiece may still merge them.
    """

    def __init__(self, tokenizer, eos_token_id: int):
        self.tokenizer, self.eos_token_id = tokenizer, eos_token_id
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        if token_id == self.eos_token_id:
            return ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        stable = text.rstrip()
        while stable.endswith("\ufffd"):
            stable = stable[:-1].rstrip()
        if stable.startswith(self.emitted) and len(stable) > len(self.emitted):
            delta = stable[len(self.emitted):]
            self.emitted = stable
            return delta
        return ""

    def finish(self) -> str:
        final = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        if not final.startswith(self.emitted):  # cannot retract; should not happen with sentencepiece decoding
            raise RuntimeError("streamed text is not a prefix of the final caption")
        delta = final[len(self.emitted):]
        self.emitted = final
        return delta
