"""Continuous batching: regions join a running decode between two steps and leave as soon as their caption ends.

Why: a batched generate runs until its longest caption ends, so its short captions wait and new requests wait for the
whole batch. On small models a decode step costs about the same for 1 or 16 rows (framework overhead dominates), and
on a GPU a batch-1 step leaves most of the card idle: keeping the batch full is where the throughput is.

`DecodeSession` (any causal LM with a transformers DynamicCache; with the traced step of dam_model/traced.py, the
cache is a dam_model/packed_rows.PackedRows) holds one KV cache for the rows in flight:
- `admit(embeds, mask, handles)` prefills new rows (left-padded) in their own cache, takes their first token, and
  merges that cache into the session's: the shorter one is left-padded along the sequence axis, masked out, and the
  two are concatenated on the batch axis. Positions are per row, so nothing else changes.
- `step()` feeds every row its last token, takes the next one (the traced step of dam_model/traced.py takes
  `tokens_per_call` at once), and returns the rows that ended (</s> emitted or max_new_tokens reached; tokens a
  row decoded past its end are discarded); they leave the cache at once. Columns no row attends to any more are
  trimmed, so a session that lives on (clicks keep coming) does not grow.
Greedy only: a sampled row's draws would depend on the other rows. Each row's ids equal `generation.generate`'s for
the same inputs (each row attends to its own tokens only; tests compare them).

`CaptionSession` is the same over a DescribeAnythingModel: regions (image, mask, query) in, Captions out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from .generation import Caption, make_caption
from .packed_rows import PackedRows
from .traced import LeanStep
from .prompt import IMAGE_TOKEN_ID

Finished = tuple[Hashable, list[int], float]  # (handle, emitted ids with </s> when emitted, mean log-probability)


@dataclass(frozen=True)
class PreparedRegion:
    """One region's model inputs made before its admission, in a thread other than the model's, while the model
    decodes others: `prepare_regions`' pixel_values [8, S, S] and is_focal, and its visual tokens [T, H] when
    `encoded_by` (the model that made them) encoded it too. The session encodes again whatever another model made
    (a promotion between preparation and admission)."""

    pixel_values: torch.Tensor
    is_focal: torch.Tensor
    visual: torch.Tensor | None = None
    encoded_by: Any = None


def prepared_rows(model: Any, batch: Any, encode: bool = True) -> list[PreparedRegion]:
    """The rows of a `prepare_regions` batch as PreparedRegions, encoded by `model.encode_prepared` when it has one
    and `encode`. Why encode ahead: the vision passes then run beside the decode (the server's prepare-ahead thread
    does it for the next bulk regions) instead of on the model thread between two decode steps."""
    encode_prepared = getattr(model, "encode_prepared", None) if encode else None
    if not callable(encode_prepared):
        return [PreparedRegion(batch.pixel_values[i], batch.is_focal[i]) for i in range(len(batch.pixel_values))]
    visual = encode_prepared(batch.pixel_values, batch.is_focal)
    owner = getattr(encode_prepared, "__self__", model)  # the model itself, through any wrapper
    return [PreparedRegion(batch.pixel_values[i], batch.is_focal[i], visual[i], owner)
            for i in range(len(batch.pixel_values))]


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeSession:
    """Greedy decoding of a changing set of rows over one KV cache (see the module docstring): a PackedRows with
    the traced step (`lean`), a transformers DynamicCache with the LLM's own forward."""

    def __init__(self, llm, max_new_tokens: int, eos_token_id: int, lean: LeanStep | None = None) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.llm, self.max_new_tokens, self.eos_token_id = llm, max_new_tokens, eos_token_id
        self.lean = lean  # the traced step and prefill (dam_model/traced.py), or None: transformers' forward
        self._reset()

    def _reset(self) -> None:
        self.packed: PackedRows | None = None  # the lean path's rows
        self.cache = None  # the eager path's DynamicCache, with:
        self.mask: torch.Tensor | None = None  # [B, L] 1 = a real token
        self.next_position: torch.Tensor | None = None  # [B, 1]
        self.last: torch.Tensor | None = None  # [B] the token each row feeds next
        self.handles: list[Hashable] = []
        self.ids: list[list[int]] = []
        self.logprob_sums: list[float] = []

    @property
    def rows(self) -> int:
        return len(self.handles)

    @property
    def width(self) -> int:
        """Cache columns in use (0 with no rows)."""
        if self.packed is not None:
            return self.packed.length
        return 0 if self.mask is None else self.mask.shape[1]

    @torch.inference_mode()
    def admit(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
              handles: Sequence[Hashable]) -> list[Finished]:
        """Prefill new rows (inputs_embeds [b, T, H], attention_mask [b, T], left-padded) and add them to the
        session; returns the rows already finished by their first token."""
        from transformers import DynamicCache  # deferred: transformers is heavy and only needed once decoding starts

        mask = attention_mask.to(device=inputs_embeds.device, dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = kv = None
        if self.lean is not None and bool(mask.all()):  # rows of one prompt length: the traced prefill
            tokens, logprobs, kv = self.lean.prefill(inputs_embeds)
        else:
            cache = DynamicCache()
            out = self.llm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                           past_key_values=cache, use_cache=True, logits_to_keep=1)
            tokens, logprobs = self._choose(out.logits[:, -1, :])
            if self.lean is not None:
                kv = torch.stack([t for layer in cache.layers for t in (layer.keys, layer.values)])
        ids = [[t] for t in tokens.tolist()]
        sums = logprobs.tolist()
        done = [len(i) >= self.max_new_tokens or i[-1] == self.eos_token_id for i in ids]
        finished = [(h, i, s / len(i)) for h, i, s, d in zip(handles, ids, sums, done) if d]
        keep = [r for r, d in enumerate(done) if not d]
        if not keep:
            return finished
        index = torch.tensor(keep, device=mask.device)
        if self.lean is not None:
            if len(keep) < len(done):
                kv = kv.index_select(1, index)
            joining = PackedRows(kv, mask[index], positions[index, -1:] + 1, tokens[index], self.lean.tokens_per_call)
            if self.packed is None:
                self.packed = joining
            else:
                self.packed.merge(joining)
        else:
            if len(keep) < len(done):
                cache.batch_select_indices(index)
            self._merge(cache, mask[index], positions[index, -1:] + 1, tokens[index])
        self.handles += [handles[r] for r in keep]
        self.ids += [ids[r] for r in keep]
        self.logprob_sums += [sums[r] for r in keep]
        return finished

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """One token for every row (tokens_per_call with the traced step); returns (and drops) the rows that ended."""
        if not self.rows:
            return []
        if self.packed is not None:  # tokens_per_call tokens per row
            tokens, logprobs = self.packed.step(self.lean)
        else:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
            # The 4D mask of one new token per row (it sees every real token of its row): given ready-made, because
            # transformers rebuilds it from the 2D mask at every step, slowly (~10x a tiny model's step) once rows
            # of different lengths are padded.
            allowed = self.mask.bool()[:, None, None, :]
            out = self.llm(input_ids=self.last[:, None], attention_mask=allowed, position_ids=self.next_position,
                           past_key_values=self.cache, use_cache=True)
            self.next_position = self.next_position + 1
            chosen, chosen_logprobs = self._choose(out.logits[:, -1, :])
            self.last = chosen
            tokens, logprobs = [[t] for t in chosen.tolist()], [[p] for p in chosen_logprobs.tolist()]
        ended = []
        for row, (row_tokens, row_logprobs) in enumerate(zip(tokens, logprobs)):
            ids = self.ids[row]
            for token, logprob in zip(row_tokens, row_logprobs):  # a row that ends keeps no token after its end
                ids.append(token)
                self.logprob_sums[row] += logprob
                if token == self.eos_token_id or len(ids) >= self.max_new_tokens:
                    ended.append(row)
                    break
        finished = [(self.handles[r], self.ids[r], self.logprob_sums[r] / len(self.ids[r])) for r in ended]
        if ended:
            self.drop(ended)
        return finished

    def drop(self, rows: Sequence[int]) -> None:
        """Remove rows (by position) from the session, e.g. finished ones or those whose client went away."""
        gone = set(rows)
        keep = [r for r in range(self.rows) if r not in gone]
        if not keep:
            self._reset()
            return
        if self.packed is not None:
            self.packed.keep(keep)
        else:
            index = torch.tensor(keep, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.next_position, self.last = self.mask[index], self.next_position[index], self.last[index]
            self._trim()
        self.handles = [self.handles[r] for r in keep]
        self.ids = [self.ids[r] for r in keep]
        self.logprob_sums = [self.logprob_sums[r] for r in keep]

    # ------------------------------------------------------------------------------------------------------------
    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        tokens = torch.argmax(logits, dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)

    def _merge(self, cache, mask: torch.Tensor, next_position: torch.Tensor, last: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.mask, self.next_position, self.last = cache, mask, next_position, last
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for ours, theirs in zip(self.cache.layers, cache.layers):
            ours.keys = torch.cat([_pad_left(ours.keys, length, -2), _pad_left(theirs.keys, length, -2)])
            ours.values = torch.cat([_pad_left(ours.values, length, -2), _pad_left(theirs.values, length, -2)])
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)])
        self.next_position = torch.cat([self.next_position, next_position])
        self.last = torch.cat([self.last, last])

    def _trim(self) -> None:
        """Drop the leading columns no row attends to (left padding of rows that have left)."""
        used = torch.nonzero(self.mask.any(dim=0)).flatten()
        first = int(used[0]) if len(used) else self.mask.shape[1]
        if first == 0:
            return
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        self.mask = self.mask[:, first:]


class CaptionSession:
    """A DecodeSession over a DescribeAnythingModel: admit regions (image, mask, query), step, get Captions."""

    def __init__(self, model: Any, max_new_tokens: int, lean: LeanStep | None = None) -> None:
        self.model = model
        self.decoder = DecodeSession(model.llm, max_new_tokens, model.config.llm.eos_token_id, lean=lean)

    @property
    def rows(self) -> int:
        return self.decoder.rows

    @property
    def handles(self) -> list[Hashable]:
        """The handles of the rows in flight, in row order."""
        return list(self.decoder.handles)

    def admit(self, regions: Sequence[tuple], handles: Sequence[Hashable]) -> list[tuple[Hashable, Caption]]:
        """Encode and prefill regions: (image, mask, query) or (image, mask, query, prepared), `prepared` being a
        PreparedRegion (or a (pixel_values, is_focal) row of `prepare_regions`) made beforehand, e.g. in a request
        thread while the model decoded, or None. Regions of one image (the same array object) are preprocessed
        together; rows without visual tokens of this model are encoded together. Returns the captions already
        finished; ValueError for an unusable region (nothing is admitted)."""
        size = self.model.config.vision.image_size
        pixels: list[Any] = [None] * len(regions)
        focal: list[Any] = [None] * len(regions)
        visual: list[Any] = [None] * len(regions)
        todo: dict[int, tuple[np.ndarray, list[int]]] = {}
        for row, (image, _, _, *prepared) in enumerate(regions):
            ready = prepared[0] if prepared else None
            if isinstance(ready, tuple):
                ready = PreparedRegion(*ready)
            if ready is not None and ready.pixel_values.shape[-1] == size:
                pixels[row], focal[row] = ready.pixel_values, ready.is_focal
                if ready.visual is not None and ready.encoded_by is self.model:
                    visual[row] = ready.visual
            else:
                todo.setdefault(id(image), (image, []))[1].append(row)
        for image, rows in todo.values():
            batch = self.model.prepare_regions(image, [regions[r][1] for r in rows])
            for i, row in enumerate(rows):
                pixels[row], focal[row] = batch.pixel_values[i], batch.is_focal[i]
        prompts = [self.model._prompt_ids(region[2]) for region in regions]
        if any(sum(1 for t in p if t == IMAGE_TOKEN_ID) != 1 for p in prompts):
            raise ValueError("an image query must contain exactly one <image> placeholder")
        with torch.inference_mode():
            missing = [row for row, tokens in enumerate(visual) if tokens is None]
            if missing:
                made = self.model.encode_prepared(torch.stack([pixels[r] for r in missing]),
                                                  torch.stack([focal[r] for r in missing]),
                                                  traced=self.decoder.lean is not None)
                for i, row in enumerate(missing):
                    visual[row] = made[i]
            embeds, mask, _ = self.model.splice(prompts, torch.stack(visual), padding_side="left")
        return self._captions(self.decoder.admit(embeds, mask, list(handles)))

    def step(self) -> list[tuple[Hashable, Caption]]:
        return self._captions(self.decoder.step())

    def drop(self, handles: Sequence[Hashable]) -> None:
        gone = set(handles)
        self.decoder.drop([r for r, h in enumerate(self.decoder.handles) if h in gone])

    def _captions(self, finished: list[Finished]) -> list[tuple[Hashable, Caption]]:
        eos = self.model.config.llm.eos_token_id
        tokenizer = self.model._require_tokenizer()
        return [(h, make_caption(tokenizer, ids, mean, eos)) for h, ids, mean in finished]
