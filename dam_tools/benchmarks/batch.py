"""Batched captioning: 8 regions of one image in ONE describe call (one left-padded generate) vs 8 sequential
describe calls, tiny preset (DAMConfig.tiny, random weights, a freshly trained toy tokenizer) on CPU, greedy,
fixed budget of new tokens, one CPU thread. Captions are checked identical first. Median wall time of repeats.
ratio = sequential time / batched time (throughput gain).
"""
from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch

from dam_model.config import DAMConfig
from dam_model.modeling import DescribeAnythingModel
from dam_model.prompt import build_prompt
from dam_model.tokenizer import load_tokenizer, train_tokenizer

MAX_NEW_TOKENS = 24


def build_model():
    words = "red green blue small large wooden metal cup box chair table person dog cat on in near the a".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 8)) + "." for _ in range(300)] + [build_prompt("<image>\nDescribe.")]
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = load_tokenizer(train_tokenizer(texts, 320, folder))
    torch.manual_seed(0)
    model = DescribeAnythingModel.from_config(DAMConfig.tiny(vocab_size=len(tokenizer)), tokenizer=tokenizer).eval()
    with torch.no_grad():  # decisive logits so no row stops at </s> early by chance
        model.llm.lm_head.weight.mul_(20)
        model.llm.lm_head.weight[tokenizer.eos_token_id].zero_()
    return model


def regions(height: int = 240, width: int = 320, count: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    masks = []
    for k in range(count):
        mh, mw = int(rng.integers(8, 120)), int(rng.integers(8, 160))
        y0, x0 = int(rng.integers(0, height - mh)), int(rng.integers(0, width - mw))
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y0 + mh, x0:x0 + mw] = True
        masks.append(mask)
    return image, masks


def _median_s(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args) -> float:
    torch.set_num_threads(1)  # tiny matrices: one thread avoids OpenMP contention on a shared 2-core machine
    repeat = args.repeat or 5
    model = build_model()
    image, masks = regions()
    batched = model.describe(image, masks, max_new_tokens=MAX_NEW_TOKENS)
    sequential = [model.describe(image, [m], max_new_tokens=MAX_NEW_TOKENS)[0] for m in masks]
    assert [c.token_ids for c in batched] == [c.token_ids for c in sequential], "batched != sequential captions"
    tokens = sum(len(c.token_ids) for c in batched)
    t_batch = _median_s(lambda: model.describe(image, masks, max_new_tokens=MAX_NEW_TOKENS), repeat)
    t_seq = _median_s(lambda: [model.describe(image, [m], max_new_tokens=MAX_NEW_TOKENS) for m in masks], repeat)
    print(f"tiny preset on CPU, {len(masks)} regions of one 320x240 image, {tokens} new tokens in all, greedy "
          f"(captions identical)")
    print(f"8 sequential describe calls : {t_seq * 1000:8.1f} ms  ({tokens / t_seq:7.1f} tokens/s)")
    print(f"one batched describe call   : {t_batch * 1000:8.1f} ms  ({tokens / t_batch:7.1f} tokens/s)")
    return t_seq / t_batch
