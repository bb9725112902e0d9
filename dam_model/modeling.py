"""DescribeAnythingModel: localized SigLIP + gated adapters -> mlp_downsample projector -> Llama, with generation.

Data flow for K images (regions or video frames), pixel_values [K, 8, S, S], is_focal [K]:
1. global pass: SigLIP(full RGB + mask) -> hidden_states[-2] = z [K, N, D] (no adapters);
2. focal pass (rows with is_focal): SigLIP(crop RGB + crop mask) with adapter l after layer l, keys/values z;
   plain rows (crop == whole image) keep z, as the release does;
3. projector: [K, N, D] -> [K, T, H] visual tokens (T = 196 for DAM-3B);
4. splice: each IMAGE_TOKEN_ID in the prompt ids is replaced by the next image's T tokens, in order.
Training (forward) pads the spliced rows on the right, generation on the left; both use `splice`.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .config import DAMConfig
from .continuous import CaptionSession
from .focal import RegionBatch, preprocess_frames, preprocess_regions, select_video_frames
from .generation import (Caption, GenerationSettings, TextStreamer, decode_steps, generate, make_caption)
from .projector import MultimodalProjector
from .prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, build_prompt, tokenize_prompt
from .traced import FocalEncoder, LeanStep, unsupported_reason
from .vision import ContextProvider, VisionTower, init_vision_weights

COMPONENTS = ("llm", "vision_tower", "mm_projector", "context_provider")
# Decode steps per traced call in caption sessions. More than one saves a GIL hand-off and a pass of the scheduler's
# Python per token (and, on a GPU, a host sync), but a row that ends inside a call wastes the rest of it and new rows
# wait for it: on the tiny CPU model 1, 2 and 4 measured the same (python scripts/bench.py concurrent, 2026-12-07).
TOKENS_PER_CALL = 1


@dataclass
class DAMOutput:
    """forward() result: loss (mean cross-entropy over label tokens, or None), logits [B, L, V] over the spliced
    sequence, attention_mask [B, L] and labels [B, L] of the spliced (right-padded) batch."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None


@dataclass
class ImageEncoding:
    """Intermediate tensors of `encode_images_detailed` (for parity checks and debugging)."""

    global_hidden_states: list[torch.Tensor]  # [L_run + 1] x [K, N, D]
    global_features: torch.Tensor  # [K, N, D]
    focal_hidden_states: list[torch.Tensor]  # [L_run + 1] x [K_focal, N, D]
    context_provider_output: torch.Tensor  # [K_focal, N, D]
    projector_input: torch.Tensor  # [K, N, D]
    visual_tokens: torch.Tensor  # [K, T, H]


class DescribeAnythingModel(nn.Module):
    """The whole DAM. Build with `from_config` (random weights, no download) or `from_pretrained` (official layout)."""

    def __init__(self, config: DAMConfig, tokenizer=None):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.vision_tower = VisionTower(config.vision)
        self.context_provider = ContextProvider(config.context_provider)
        self.mm_projector = MultimodalProjector(config.vision.hidden_size, config.llm.hidden_size)
        llama_config = config.llm.to_llama_config()
        llama_config._attn_implementation = "sdpa"
        self.llm = LlamaForCausalLM(llama_config)
        self.tokenizer = tokenizer
        self.source_path: str | None = None  # folder the weights came from (tokenizer files are copied from it)

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: DAMConfig, tokenizer=None) -> "DescribeAnythingModel":
        """Random weights (zero mask embedding and gates, as the release initialises them); never downloads."""
        model = cls(config, tokenizer)
        if next(model.parameters()).device.type != "meta":
            init_vision_weights(model.vision_tower)
            init_vision_weights(model.context_provider)
        return model

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None) -> "DescribeAnythingModel":
        """Load an official-layout checkpoint folder (or a hub id "org/name", fetched with snapshot_download)
        with strict key checking. Default dtype: float32 on CPU, bfloat16 on CUDA."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, path_or_hub_id, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | os.PathLike, max_shard_bytes: int | None = None) -> str:
        """Write the official layout atomically (temp folder beside the target, then rename); returns the path."""
        from .checkpoint import save_pretrained

        kwargs = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
        return save_pretrained(self, directory, **kwargs)

    def component_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """State dict per official sub-folder (llm, vision_tower, mm_projector, context_provider)."""
        return {name: getattr(self, name).state_dict() for name in COMPONENTS}

    @property
    def device(self) -> torch.device:
        return self.llm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.lm_head.weight.dtype

    @property
    def tokens_per_image(self) -> int:
        return self.config.tokens_per_image

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: pass one to from_config or load with from_pretrained")
        return self.tokenizer

    # -- vision ------------------------------------------------------------------------------------------------
    def encode_images_detailed(self, pixel_values: torch.Tensor, is_focal: torch.Tensor,
                               all_layers: bool = True) -> ImageEncoding:
        """Run both vision passes and the projector, keeping every intermediate (see ImageEncoding).
        pixel_values [K, 8, S, S] float, is_focal [K] bool. all_layers=True runs every SigLIP layer."""
        pixel_values = pixel_values.to(self.device)
        is_focal = torch.as_tensor(is_focal, dtype=torch.bool, device=self.device)
        run = self.config.vision.num_hidden_layers if all_layers else self.config.num_vision_layers_used
        global_states = self.vision_tower(pixel_values[:, :4], num_layers=run, output_hidden_states=True)
        global_features = global_states[self.config.num_vision_layers_used]
        projector_input = global_features.clone()
        focal_states: list[torch.Tensor] = []
        focal_output = global_features[:0]
        if bool(is_focal.any()):
            focal_states = self.vision_tower(pixel_values[is_focal, 4:], num_layers=run,
                                             adapters=self.context_provider, context=global_features[is_focal],
                                             output_hidden_states=True)
            focal_output = focal_states[self.config.num_vision_layers_used]
            projector_input[is_focal] = focal_output
        return ImageEncoding(global_states, global_features, focal_states, focal_output, projector_input,
                             self.mm_projector(projector_input))

    def encode_images(self, pixel_values: torch.Tensor, is_focal: torch.Tensor) -> torch.Tensor:
        """Visual tokens [K, T, H_llm] for pixel_values [K, 8, S, S] and is_focal [K] (only the layers needed)."""
        pixel_values = pixel_values.to(self.device)
        is_focal = torch.as_tensor(is_focal, dtype=torch.bool, device=self.device)
        used = self.config.num_vision_layers_used
        features = self.vision_tower(pixel_values[:, :4], num_layers=used)
        if bool(is_focal.any()):
            focal = self.vision_tower(pixel_values[is_focal, 4:], num_layers=used, adapters=self.context_provider,
                                      context=features[is_focal])
            features = features.clone()
            features[is_focal] = focal.to(features.dtype)
        return self.mm_projector(features)

    # -- splicing ----------------------------------------------------------------------------------------------
    def splice(self, rows: Sequence[Sequence[int]], visual_tokens: torch.Tensor | None,
               labels: Sequence[Sequence[int]] | None = None, padding_side: str = "right"):
        """Replace each IMAGE_TOKEN_ID by the next image's visual tokens (images consumed in row order).

        rows: B id lists; visual_tokens [K, T, H] with K = number of placeholders in all rows; labels: B lists
        aligned with rows (image positions become IGNORE_INDEX). Returns (inputs_embeds [B, L, H],
        attention_mask [B, L] long, labels [B, L] or None), padded on `padding_side`.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        embed = self.llm.get_input_embeddings()
        needed = sum(1 for row in rows for t in row if t == IMAGE_TOKEN_ID)
        available = 0 if visual_tokens is None else visual_tokens.shape[0]
        if needed != available:
            raise ValueError(f"prompt has {needed} image placeholders but {available} images were given")
        pieces: list[torch.Tensor] = []
        label_pieces: list[torch.Tensor] = []
        image_index = 0
        for r, row in enumerate(rows):
            ids = torch.as_tensor(list(row), dtype=torch.long, device=self.device)
            row_labels = None if labels is None else torch.as_tensor(list(labels[r]), dtype=torch.long, device=self.device)
            if row_labels is not None and row_labels.shape != ids.shape:
                raise ValueError(f"row {r}: {len(labels[r])} labels for {len(row)} ids")
            text = embed(ids.clamp(min=0))
            cuts = torch.nonzero(ids == IMAGE_TOKEN_ID).flatten().tolist()
            parts, label_parts, start = [], [], 0
            for cut in cuts:
                parts += [text[start:cut], visual_tokens[image_index].to(text.dtype)]
                if row_labels is not None:
                    label_parts += [row_labels[start:cut],
                                    torch.full((visual_tokens.shape[1],), IGNORE_INDEX, device=self.device)]
                image_index += 1
                start = cut + 1
            parts.append(text[start:])
            pieces.append(torch.cat(parts))
            if row_labels is not None:
                label_parts.append(row_labels[start:])
                label_pieces.append(torch.cat(label_parts))
        longest = max(p.shape[0] for p in pieces)
        if longest > self.config.llm.max_position_embeddings:
            raise ValueError(f"spliced sequence of {longest} tokens exceeds max_position_embeddings "
                             f"{self.config.llm.max_position_embeddings}")
        hidden = pieces[0].shape[1]
        embeds = pieces[0].new_zeros(len(pieces), longest, hidden)
        mask = torch.zeros(len(pieces), longest, dtype=torch.long, device=self.device)
        out_labels = None if labels is None else torch.full((len(pieces), longest), IGNORE_INDEX, device=self.device)
        for r, piece in enumerate(pieces):
            n = piece.shape[0]
            span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
            embeds[r, span] = piece
            mask[r, span] = 1
            if out_labels is not None:
                out_labels[r, span] = label_pieces[r]
        return embeds, mask, out_labels

    # -- training forward --------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, is_focal: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> DAMOutput:
        """Teacher-forced pass. input_ids [B, T] with IMAGE_TOKEN_ID placeholders (padding marked by
        attention_mask == 0, either side), pixel_values [K, 8, S, S] / is_focal [K] for the K placeholders in row
        order, labels [B, T] (IGNORE_INDEX = -100 where not scored). loss = mean token cross-entropy."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool().cpu()
        ids_cpu = input_ids.cpu()
        rows = [ids_cpu[b][keep[b]].tolist() for b in range(ids_cpu.shape[0])]
        row_labels = None if labels is None else [labels.cpu()[b][keep[b]].tolist() for b in range(ids_cpu.shape[0])]
        visual = None
        if pixel_values is not None:
            if is_focal is None:
                raise ValueError("is_focal is required with pixel_values")
            visual = self.encode_images(pixel_values.to(self.device), is_focal)
        embeds, mask, spliced_labels = self.splice(rows, visual, row_labels, padding_side="right")
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
        loss = None
        if spliced_labels is not None:
            targets = spliced_labels[:, 1:]
            if bool((targets != IGNORE_INDEX).any()):
                loss = nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                   targets.reshape(-1), ignore_index=IGNORE_INDEX)
            else:
                loss = logits.sum() * 0.0
        return DAMOutput(loss=loss, logits=logits, attention_mask=mask, labels=spliced_labels)

    def collate(self, examples: Sequence) -> dict[str, torch.Tensor]:
        """Alias of `collate_training_batch` using this model's pad id."""
        return collate_training_batch(examples, pad_token_id=self.config.llm.pad_token_id)

    # -- inference ---------------------------------------------------------------------------------------------
    def _settings(self, **gen) -> GenerationSettings:
        return GenerationSettings(**gen)

    def _encode_items(self, items: Sequence[tuple]) -> tuple[torch.Tensor, list[int]]:
        """Preprocess and encode (image, masks) items: visual tokens for all regions [K, T, H], regions per item."""
        size = self.config.vision.image_size
        batches: list[RegionBatch] = []
        counts = []
        for image, masks in items:
            if isinstance(masks, np.ndarray) and masks.ndim == 2:
                masks = [masks]
            batch = preprocess_regions(image, list(masks), size)
            batches.append(batch)
            counts.append(batch.pixel_values.shape[0])
        pixel_values = torch.cat([b.pixel_values for b in batches])
        is_focal = torch.cat([b.is_focal for b in batches])
        with torch.inference_mode():
            visual = self.encode_images(pixel_values.to(self.device, self.dtype), is_focal)
        return visual, counts

    def _prompt_ids(self, query: str | None, video: bool = False) -> list[int]:
        query = query or (self.config.video_query if video else self.config.image_query)
        # Kept per query: the slow tokenizer takes ~0.3 ms a prompt, and every admitted region asks for one.
        known = self.__dict__.setdefault("_prompt_cache", {})
        tokenizer = self._require_tokenizer()
        key = (query, id(tokenizer))
        if key not in known:
            if len(known) >= 256:  # free-text category hints: bounded
                known.clear()
            known[key] = tuple(tokenize_prompt(tokenizer, build_prompt(query)))
        return list(known[key])

    def _generate_rows(self, rows: list[list[int]], visual: torch.Tensor, settings: GenerationSettings) -> list[Caption]:
        tokenizer = self._require_tokenizer()
        with torch.inference_mode():
            embeds, mask, _ = self.splice(rows, visual, padding_side="left")
            eos = self.config.llm.eos_token_id
            ids, means = generate(self.llm, embeds, mask, settings, eos, self.config.llm.pad_token_id)
        return [make_caption(tokenizer, row_ids, mean, eos) for row_ids, mean in zip(ids, means)]

    def describe(self, image, masks, *, query: str | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_p: float = 0.5, seed: int | None = None) -> list[Caption]:
        """One caption per mask of one image (all regions in one padded generate).

        image: HxWx3 uint8 numpy or PIL; masks: one HxW mask or a list (bool/uint8, > 0 = foreground).
        temperature 0 = greedy; the release samples with RELEASE_TEMPERATURE = 0.2 and top_p 0.5.
        """
        return self.describe_batch([(image, masks)], query=query, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed)[0]

    def describe_batch(self, items: Sequence[tuple], *, query: str | None = None, max_new_tokens: int = 128,
                       temperature: float = 0.0, top_p: float = 0.5, seed: int | None = None) -> list[list[Caption]]:
        """Captions for every region of every (image, masks) item, decoded in ONE left-padded generate call."""
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        visual, counts = self._encode_items(items)
        prompt = self._prompt_ids(query)
        if sum(1 for t in prompt if t == IMAGE_TOKEN_ID) != 1:
            raise ValueError("an image query must contain exactly one <image> placeholder")
        captions = self._generate_rows([prompt] * visual.shape[0], visual, settings)
        grouped, start = [], 0
        for count in counts:
            grouped.append(captions[start:start + count])
            start += count
        return grouped

    def prepare_regions(self, image, masks: Sequence, shared_view: np.ndarray | None = None) -> RegionBatch:
        """The model inputs of regions of one image (preprocess_regions at this model's vision size): CPU work that
        a caller may do ahead, outside the model's lock (CaptionSession.admit takes the rows). shared_view: the
        image's `focal.full_view` at this size, when the caller keeps it (clicks on one image)."""
        return preprocess_regions(image, list(masks), self.config.vision.image_size, shared_view=shared_view)

    def caption_session(self, max_new_tokens: int = 128, lean: bool = True,
                        tokens_per_call: int = TOKENS_PER_CALL) -> CaptionSession:
        """Greedy continuous batching: regions join a running decode and leave when done (dam_model/continuous.py).
        lean: decode with the traced step and prefill (dam_model/traced.py) when the LLM supports it, taking
        `tokens_per_call` tokens per step; False: transformers' forward, one token per step."""
        return CaptionSession(self, max_new_tokens, lean=self.lean_step(tokens_per_call) if lean else None)

    def lean_step(self, tokens_per_call: int = TOKENS_PER_CALL) -> LeanStep | None:
        """The traced decode step and prefill of this model's LLM (dam_model/traced.py) on its current device and
        dtype, made once (None when the LLM is not supported or is training)."""
        if unsupported_reason(self.llm):
            return None
        return self._traced(("step", tokens_per_call), lambda: LeanStep(self.llm, tokens_per_call))

    def encode_prepared(self, pixel_values: torch.Tensor, is_focal: torch.Tensor, traced: bool = True) -> torch.Tensor:
        """Visual tokens [K, T, H_llm] of `prepare_regions` rows: one traced call when every row is a focal crop
        (and `traced`), else encode_images. Safe to call from several threads at once (the server's prepare-ahead
        thread encodes bulk regions while the model thread decodes: dam_model/continuous.prepared_rows)."""
        with torch.inference_mode():
            pixels = pixel_values.to(self.device, self.dtype)
            is_focal = torch.as_tensor(is_focal, dtype=torch.bool)
            encoder = self.focal_encoder() if traced and bool(is_focal.all()) else None
            return encoder(pixels) if encoder is not None else self.encode_images(pixels, is_focal)

    def focal_encoder(self) -> FocalEncoder | None:
        """encode_images of regions that are all focal crops as one traced call (None while training)."""
        return None if self.training else self._traced("focal", lambda: FocalEncoder(self))

    def _traced(self, name, make):
        cache = self.__dict__.setdefault("_traced_parts", {})
        key = (name, self.device, self.dtype)
        lock = self.__dict__.get("_traced_lock") or self.__dict__.setdefault("_traced_lock", threading.Lock())
        with lock:  # the prepare-ahead thread encodes too
            if key not in cache:
                cache[key] = make()
            return cache[key]

    def stream(self, image, mask, *, query: str | None = None, max_new_tokens: int = 128, temperature: float = 0.0,
               top_p: float = 0.5, seed: int | None = None) -> Iterator[str]:
        """Text deltas of one region's caption as they are decoded; their concatenation is the caption text."""
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        visual, _ = self._encode_items([(image, [mask])])
        yield from self._stream_rows([self._prompt_ids(query)], visual, settings)

    def _stream_rows(self, rows: list[list[int]], visual: torch.Tensor, settings: GenerationSettings) -> Iterator[str]:
        tokenizer = self._require_tokenizer()
        eos = self.config.llm.eos_token_id
        streamer = TextStreamer(tokenizer, eos)
        with torch.inference_mode():
            embeds, mask, _ = self.splice(rows, visual, padding_side="left")
        for ids, _, alive in decode_steps(self.llm, embeds, mask, settings, eos, self.config.llm.pad_token_id):
            if bool(alive[0]):
                delta = streamer.push(int(ids[0]))
                if delta:
                    yield delta
        tail = streamer.finish()
        if tail:
            yield tail

    def prepare_video(self, frames: Sequence, masks: Sequence) -> tuple[RegionBatch, list[int]]:
        """Select num_video_frames usable frames (`select_video_frames` rule) and preprocess each with its own
        mask and focal crop. Returns the batch [F, 8, S, S] and the chosen frame indices."""
        if len(frames) != len(masks):
            raise ValueError(f"{len(frames)} frames but {len(masks)} masks")
        binaries = [np.asarray(m) > 0 if not hasattr(m, "convert") else np.asarray(m.convert("L")) > 0 for m in masks]
        indices = select_video_frames(binaries, self.config.num_video_frames)
        batch = preprocess_frames([frames[i] for i in indices], [binaries[i] for i in indices],
                                  self.config.vision.image_size)
        return batch, indices

    def describe_video(self, frames: Sequence, masks: Sequence, *, query: str | None = None,
                       max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 0.5,
                       seed: int | None = None, stream: bool = False):
        """Caption of the masked object across a video: frames (HxWx3 uint8 or PIL) with one mask each.
        Frames with an empty mask are unusable; see `select_video_frames` for how 8 are chosen.
        Returns a Caption, or an iterator of text deltas when stream=True."""
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        batch, _ = self.prepare_video(frames, masks)
        with torch.inference_mode():
            visual = self.encode_images(batch.pixel_values.to(self.device, self.dtype), batch.is_focal)
        prompt = self._prompt_ids(query, video=True)
        if sum(1 for t in prompt if t == IMAGE_TOKEN_ID) != visual.shape[0]:
            raise ValueError(f"video query needs {visual.shape[0]} <image> placeholders")
        if stream:
            return self._stream_rows([prompt], visual, settings)
        return self._generate_rows([prompt], visual, settings)[0]


def collate_training_batch(examples: Sequence, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad teacher-forcing examples into one batch (right padding).

    examples: (input_ids list[int], labels list[int], pixel_values [k, 8, S, S], is_focal [k]) with k equal to the
    number of IMAGE_TOKEN_ID in input_ids. Returns input_ids [B, T], attention_mask [B, T], labels [B, T]
    (IGNORE_INDEX on padding), pixel_values [sum k, 8, S, S], is_focal [sum k].
    """
    if not examples:
        raise ValueError("collate_training_batch needs at least one example")
    longest = max(len(e[0]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    pixels, focal = [], []
    for b, (ids, labs, pv, isf) in enumerate(examples):
        if len(ids) != len(labs):
            raise ValueError(f"example {b}: {len(ids)} ids but {len(labs)} labels")
        pv = torch.as_tensor(pv)
        if pv.dim() == 3:
            pv = pv[None]
        if sum(1 for t in ids if t == IMAGE_TOKEN_ID) != pv.shape[0]:
            raise ValueError(f"example {b}: image placeholders and pixel_values rows differ")
        input_ids[b, :len(ids)] = torch.as_tensor(ids)
        labels[b, :len(labs)] = torch.as_tensor(labs)
        attention_mask[b, :len(ids)] = 1
        pixels.append(pv)
        focal.append(torch.as_tensor(isf, dtype=torch.bool).reshape(-1))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "pixel_values": torch.cat(pixels), "is_focal": torch.cat(focal)}
