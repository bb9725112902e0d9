"""Tokenizer: the checkpoint's slow sentencepiece Llama tokenizer (legacy=False), and a trainer for toy models."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from transformers import LlamaTokenizer

from .fileio import atomic_write_bytes, atomic_write_text

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.json")


def tokenizer_folder(path: str | os.PathLike) -> Path:
    """The folder holding tokenizer.model: the checkpoint root's llm/ sub-folder, or `path` itself."""
    path = Path(path)
    for candidate in (path / "llm", path):
        if (candidate / "tokenizer.model").is_file():
            return candidate
    raise FileNotFoundError(f"no tokenizer.model in {path} or {path / 'llm'}")


def load_tokenizer(folder: str | os.PathLike):
    """Load the slow LlamaTokenizer (sentencepiece, legacy=False, right padding) as the release does.

    `folder` is a checkpoint root (the tokenizer lives in llm/) or the folder with tokenizer.model itself.
    """
    tok = LlamaTokenizer.from_pretrained(str(tokenizer_folder(folder)), legacy=False, padding_side="right")
    if tok.pad_token is None:
        # The release has no pad piece; id 0 (<unk>) is the LLM config's pad id. Only used for padding batches.
        tok.pad_token = tok.unk_token
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> Path:
    """Train a sentencepiece BPE tokenizer (byte_fallback, unk 0 / bos 1 / eos 2, identity normalisation,
    dummy prefix) on `texts`, and write tokenizer.model, tokenizer_config.json and special_tokens_map.json
    into `out_dir`, loadable by `load_tokenizer`. Returns `out_dir`.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer needs at least one non-empty text")
    if vocab_size < 256 + 3 + 1:
        raise ValueError(f"vocab_size {vocab_size} too small: byte_fallback alone needs 259 pieces")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2, train_extremely_large_corpus=False,
    )
    atomic_write_bytes(out / "tokenizer.model", buffer.getvalue())
    special = {name: {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
               for name, content in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    config = {
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "padding_side": "right", "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
        "sp_model_kwargs": {}, "model_max_length": 1000000000000000019884624838656,
    }
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    return out
