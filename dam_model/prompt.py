"""The vicuna_v1 conversation prompt with `<image>` placeholders, and teacher-forcing examples.

Prompt (release, conv mode "v1"): SYSTEM + " USER: " + query + " ASSISTANT:"; a training target appends
" " + answer + "</s>". Tokenisation follows the release: the prompt is split at each `<image>`, every chunk is
tokenised on its own (BOS added), BOS is kept on the first chunk only, and IMAGE_TOKEN_ID marks each image.
"""
from __future__ import annotations

from typing import Sequence

IMAGE_TOKEN_ID = -200  # placeholder id replaced by the image's projected visual tokens
IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100  # label value ignored by the loss
SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
USER_ROLE, ASSISTANT_ROLE = "USER", "ASSISTANT"
STOP_STRING = "</s>"
DEFAULT_IMAGE_QUERY = "<image>\nDescribe the masked region in detail."  # DAM-3B's image query


def build_prompt(query: str) -> str:
    """vicuna_v1 prompt for one user turn awaiting the assistant's answer (`query` holds the <image> placeholders)."""
    return f"{SYSTEM_PROMPT} {USER_ROLE}: {query} {ASSISTANT_ROLE}:"


def category_query(image_query: str | None, label: str) -> str:
    """A model's image query with a region's label spliced in (CATEGORY_HINT): "<image>\nDescribe the masked region
    (a {label}) in detail." for DAM-3B's query. The server and the bulk job both ask this way."""
    base = image_query or DEFAULT_IMAGE_QUERY
    label = " ".join(str(label).split())[:64]
    if "the masked region" in base:
        return base.replace("the masked region", f"the masked region (a {label})", 1)
    return base.rstrip() + f" The region is a {label}."


def tokenize_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` with IMAGE_TOKEN_ID at each <image> (BOS first; no EOS)."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    for index, chunk in enumerate(chunks):
        if index > 0:
            ids.append(IMAGE_TOKEN_ID)
            if chunk and chunk[0] == bos:
                chunk = chunk[1:]
        ids.extend(chunk)
    return ids


def encode_query(tokenizer, query: str) -> list[int]:
    """Shortcut: tokenize_prompt(tokenizer, build_prompt(query))."""
    return tokenize_prompt(tokenizer, build_prompt(query))


def encode_answer(tokenizer, answer: str) -> list[int]:
    """Answer token ids as the model generates them after "ASSISTANT:" (dummy-prefix space, no BOS), then </s>."""
    ids = tokenizer(answer.strip(), add_special_tokens=False).input_ids
    return list(ids) + [tokenizer.eos_token_id]


def encode_training_example(tokenizer, query: str, answer: str) -> tuple[list[int], list[int]]:
    """Teacher-forcing pair: (input_ids, labels) = inference prompt + answer + </s>; labels are IGNORE_INDEX
    (-100) on the prompt and the image placeholders, and the token ids on the answer and </s>."""
    prompt_ids = encode_query(tokenizer, query)
    answer_ids = encode_answer(tokenizer, answer)
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def count_images(input_ids: Sequence[int]) -> int:
    """Number of IMAGE_TOKEN_ID placeholders in a sequence."""
    return sum(1 for t in input_ids if t == IMAGE_TOKEN_ID)
