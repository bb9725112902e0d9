"""Reference caption metrics with pycocoevalcap's formulas on a simple lower-case word tokenisation: corpus
BLEU-1..4 ("closest" reference length, brevity penalty), ROUGE-L (F-measure with beta 1.2, best reference),
CIDEr-D (tf-idf over 1..4-grams from the references, clipped counts, Gaussian length penalty with sigma 6, x10),
and the edit effort (Levenshtein distance / longer length, by words and by characters)."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Sequence

import numpy as np


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; punctuation dropped (a stand-in for the PTB tokenizer)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _as_reference_lists(references: Sequence[str | Sequence[str]], count: int) -> list[list[str]]:
    if len(references) != count:
        raise ValueError(f"{count} candidates for {len(references)} reference entries")
    result = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in result):
        raise ValueError("every candidate needs at least one reference")
    return result


def bleu(candidates: Sequence[str], references: Sequence[str | Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n as pycocoevalcap computes it: clipped n-gram counts summed over the corpus,
    the "closest" reference length per sentence, and a brevity penalty exp(1 - r / c) when c < r."""
    refs_list = _as_reference_lists(references, len(candidates))
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * max_n, [0] * max_n
    test_len = ref_len = 0
    for candidate, refs in zip(candidates, refs_list):
        tokens = tokenize(candidate)
        ref_tokens = [tokenize(r) for r in refs]
        test_len += len(tokens)
        ref_len += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(tokens, n)
            max_ref: Counter[tuple[str, ...]] = Counter()
            for r in ref_tokens:
                for gram, c in _ngrams(r, n).items():
                    max_ref[gram] = max(max_ref[gram], c)
            correct[n - 1] += sum(min(c, max_ref[gram]) for gram, c in counts.items())
            guess[n - 1] += max(len(tokens) - n + 1, 0)
    scores, product = [], 1.0
    for k in range(max_n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1.0:
        scores = [s * math.exp(1.0 - 1.0 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            saved = row[j]
            row[j] = previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
            previous_diagonal = saved
    return row[-1]


def rouge_l(candidates: Sequence[str], references: Sequence[str | Sequence[str]], beta: float = 1.2) -> float:
    """Mean ROUGE-L F over candidates: best precision and best recall over the references (pycocoevalcap)."""
    refs_list = _as_reference_lists(references, len(candidates))
    scores = []
    for candidate, refs in zip(candidates, refs_list):
        tokens = tokenize(candidate)
        precisions, recalls = [], []
        for reference in refs:
            ref_tokens = tokenize(reference)
            common = _lcs(ref_tokens, tokens)
            precisions.append(common / len(tokens) if tokens else 0.0)
            recalls.append(common / len(ref_tokens) if ref_tokens else 0.0)
        p, r = max(precisions), max(recalls)
        scores.append((1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p > 0 and r > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def cider_d(candidates: Sequence[str], references: Sequence[str | Sequence[str]], *, max_n: int = 4,
            sigma: float = 6.0) -> float:
    """Mean CIDEr-D (pycocoevalcap's CiderScorer): n-gram tf-idf vectors with document frequencies from the
    references of this corpus, clipped overlap min(hyp, ref) * ref, cosine per n, Gaussian penalty on the
    bigram-count difference, averaged over n and references, times 10."""
    refs_list = _as_reference_lists(references, len(candidates))
    if not candidates:
        return 0.0

    def counts(text: str) -> Counter[tuple[str, ...]]:
        tokens = tokenize(text)
        total: Counter[tuple[str, ...]] = Counter()
        for n in range(1, max_n + 1):
            total.update(_ngrams(tokens, n))
        return total

    ref_counts = [[counts(r) for r in refs] for refs in refs_list]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for refs in ref_counts:
        document_frequency.update({gram for c in refs for gram in c})
    log_docs = math.log(float(len(candidates)))

    def vector(cnts: Counter[tuple[str, ...]]):
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(max_n)]
        norm, length = [0.0] * max_n, 0
        for gram, tf in cnts.items():
            n = len(gram) - 1
            vec[n][gram] = tf * (log_docs - math.log(max(1.0, document_frequency[gram])))
            norm[n] += vec[n][gram] ** 2
            if n == 1:  # pycocoevalcap measures length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for candidate, refs in zip(candidates, ref_counts):
        vec_h, norm_h, len_h = vector(counts(candidate))
        total = np.zeros(max_n)
        for ref in refs:
            vec_r, norm_r, len_r = vector(ref)
            delta = float(len_h - len_r)
            for n in range(max_n):
                value = sum(min(weight, vec_r[n].get(gram, 0.0)) * vec_r[n].get(gram, 0.0)
                            for gram, weight in vec_h[n].items())
                if norm_h[n] != 0 and norm_r[n] != 0:
                    value /= norm_h[n] * norm_r[n]
                total[n] += value * math.exp(-(delta ** 2) / (2 * sigma ** 2))
        scores.append(float(np.mean(total)) / len(refs) * 10.0)
    return float(np.mean(scores))


def levenshtein(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Edit distance (insertions, deletions, substitutions cost 1) between two sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous_diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            saved = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, previous_diagonal + (x != y))
            previous_diagonal = saved
    return row[-1]


def edit_effort(candidate: str, reference: str, level: str = "word") -> float:
    """Normalised edit distance in [0, 1]: Levenshtein(candidate, reference) / the longer length.
    level "word" compares tokenize() words, "char" the raw strings. Two empty texts give 0."""
    if level == "word":
        a, b = tokenize(candidate), tokenize(reference)
    elif level == "char":
        a, b = list(candidate), list(reference)
    else:
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def caption_metrics(candidates: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """BLEU-4, ROUGE-L, CIDEr-D and mean edit effort (word and char; against the first reference)."""
    refs_list = _as_reference_lists(references, len(candidates))
    if not candidates:
        return {"bleu4": 0.0, "rouge_l": 0.0, "cider_d": 0.0, "edit_effort_word": 0.0, "edit_effort_char": 0.0}
    return {
        "bleu4": bleu(candidates, refs_list)[3],
        "rouge_l": rouge_l(candidates, refs_list),
        "cider_d": cider_d(candidates, refs_list),
        "edit_effort_word": float(np.mean([edit_effort(c, r[0], "word") for c, r in zip(candidates, refs_list)])),
        "edit_effort_char": float(np.mean([edit_effort(c, r[0], "char") for c, r in zip(candidates, refs_list)])),
    }

