"""Prompt augmentation for DAM training (the paper's 15 prompt variants, some count-conditioned).

Every training example pairs a query with a reference caption. The pairing follows the query's intent:
detail prompts get the long caption, brief prompts the short one, and count-conditioned prompts state the
TRUE word or sentence count of the caption they are paired with, so the model learns to obey the count.
At inference the official default query is used, so a configurable fraction of examples keeps exactly
that query with the long caption.

Everything is a pure function of a `random.Random`, so a seed decides the whole sequence.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

PromptKind = Literal["detail", "brief", "words", "sentences"]

#: The release's inference query (vicuna_v1 template, image model).
DEFAULT_QUERY = "Describe the masked region in detail."


@dataclass(frozen=True)
class PromptTemplate:
    """One query template. `{n}` is a word count, `{k}` a sentence count, `{sentences}` "sentence(s)"."""

    text: str
    kind: PromptKind

    def render(self, caption: str) -> str:
        """The query for `caption`: count placeholders get the caption's true counts."""
        k = count_sentences(caption)
        return self.text.format(n=count_words(caption), k=k, sentences="sentence" if k == 1 else "sentences")


PROMPT_TEMPLATES: tuple[PromptTemplate, ...] = (
    PromptTemplate(DEFAULT_QUERY, "detail"),
    PromptTemplate("Give a detailed description of the masked region.", "detail"),
    PromptTemplate("Describe the object in the masked region in detail.", "detail"),
    PromptTemplate("What is in the masked region? Describe it in detail.", "detail"),
    PromptTemplate("Provide a thorough description of the highlighted region.", "detail"),
    PromptTemplate("Describe the masked region briefly.", "brief"),
    PromptTemplate("Give a short description of the masked region.", "brief"),
    PromptTemplate("What is in the masked region? Answer in a few words.", "brief"),
    PromptTemplate("Briefly describe the object in the masked region.", "brief"),
    PromptTemplate("Describe the masked region in about {n} words.", "words"),
    PromptTemplate("Describe the object in the masked region using roughly {n} words.", "words"),
    PromptTemplate("Write a {n}-word description of the masked region.", "words"),
    PromptTemplate("Describe the masked region in {k} {sentences}.", "sentences"),
    PromptTemplate("Describe the object in the masked region in {k} {sentences}.", "sentences"),
    PromptTemplate("Using {k} {sentences}, describe the masked region.", "sentences"),
)

_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def count_words(text: str) -> int:
    """Whitespace-separated words in `text` (punctuation attached to a word does not count apart)."""
    return len(text.split())


def count_sentences(text: str) -> int:
    """Sentences in `text`: runs of . ! ? followed by a space or the end; a trailing fragment counts as one."""
    text = text.strip()
    if not text:
        return 0
    ends = list(_SENTENCE_END.finditer(text))
    tail = text[ends[-1].end():].strip() if ends else text
    return len(ends) + (1 if tail else 0)


@dataclass(frozen=True)
class AugmentedExample:
    """A (query, answer) pair and the index of its template in PROMPT_TEMPLATES (-1 never occurs)."""

    query: str
    answer: str
    template_index: int


def augment_prompt(
    long_caption: str,
    short_caption: str | None,
    rng: random.Random,
    default_fraction: float = 0.5,
) -> AugmentedExample:
    """Pick a query for one region and pair it with the matching reference caption.

    With probability `default_fraction` the result is (DEFAULT_QUERY, long_caption), the inference setting.
    Otherwise a template is drawn uniformly among the 15 (brief templates only when a short caption exists);
    count templates pick the short or long caption at random and state that caption's true counts.
    """
    if not long_caption.strip():
        raise ValueError("long_caption is empty")
    if not 0.0 <= default_fraction <= 1.0:
        raise ValueError(f"default_fraction must be in [0, 1], got {default_fraction}")
    has_short = bool(short_caption and short_caption.strip())
    if rng.random() < default_fraction:
        return AugmentedExample(DEFAULT_QUERY, long_caption, 0)
    choices = [i for i, t in enumerate(PROMPT_TEMPLATES) if has_short or t.kind != "brief"]
    index = rng.choice(choices)
    template = PROMPT_TEMPLATES[index]
    if template.kind == "detail":
        answer = long_caption
    elif template.kind == "brief":
        answer = short_caption  # type: ignore[assignment]  (has_short checked above)
    else:
        answer = rng.choice([long_caption, short_caption]) if has_short else long_caption
    return AugmentedExample(template.render(answer), answer, index)


def example_rng(seed: int, step: int, slot: int) -> random.Random:
    """A generator owned by one (step, batch slot): the augmentation is reproducible after a resume."""
    return random.Random(f"dam-augment/{seed}/{step}/{slot}")


def prompt_vocabulary_texts(max_words: int = 80, max_sentences: int = 8) -> list[str]:
    """Every query the augmenter can produce for counts up to the given bounds (for tokenizer training)."""
    texts = []
    for template in PROMPT_TEMPLATES:
        if template.kind == "words":
            texts += [template.text.format(n=n) for n in range(1, max_words + 1)]
        elif template.kind == "sentences":
            texts += [template.text.format(k=k, sentences="sentence" if k == 1 else "sentences")
                      for k in range(1, max_sentences + 1)]
        else:
            texts.append(template.text)
    return texts
