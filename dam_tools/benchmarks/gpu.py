"""DAM-3B-preset speed on a CUDA GPU in bfloat16 with random weights (no download): vision encode + prefill
latency for one region, and greedy decode throughput at batch 1 and batch 8 (128 new tokens, EOS disabled).
Without CUDA it prints that it needs CUDA and exits non-zero: it never reports CPU or invented numbers.
ratio = decode tokens/s at batch 8 / decode tokens/s at batch 1.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from dam_model.checkpoint import reset_rotary
from dam_model.config import DAMConfig
from dam_model.generation import GenerationSettings, generate
from dam_model.modeling import DescribeAnythingModel
from dam_model.prompt import IMAGE_TOKEN_ID

PROMPT_TOKENS = 60  # text tokens of the vicuna_v1 image prompt around <image> (DAM-3B: ~60 + 196 visual)
NEW_TOKENS = 128


def build_random_model(config, device, dtype):
    """The model of `config` with random weights, directly on `device` in `dtype`."""
    torch.manual_seed(0)
    with torch.device(device):
        model = DescribeAnythingModel.from_config(config)
    model = model.to(dtype).eval()
    reset_rotary(model, torch.device(device))  # keep the rotary table in fp32 as transformers does
    return model


def _timed(fn, device, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, device, repeat: int = 5, new_tokens: int = NEW_TOKENS) -> dict[str, float]:
    """Median timings (seconds) of encode, prefill and decode for the given model (any device)."""
    size = model.config.vision.image_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.llm.vocab_size
    text = torch.randint(3, vocab, (PROMPT_TOKENS,), generator=generator).tolist()
    prompt = [1] + text[: PROMPT_TOKENS // 2] + [IMAGE_TOKEN_ID] + text[PROMPT_TOKENS // 2:]
    results = {}
    for batch in (1, 8):
        pixels = (torch.rand(batch, 8, size, size, generator=generator) * 2 - 1).to(device, model.dtype)
        is_focal = torch.ones(batch, dtype=torch.bool, device=device)
        eos = model.config.llm.eos_token_id

        def encode():
            with torch.inference_mode():
                return model.encode_images(pixels, is_focal)

        def prefill():
            with torch.inference_mode():
                embeds, mask, _ = model.splice([prompt] * batch, encode(), padding_side="left")
                return model.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)

        def full(tokens: int):
            with torch.inference_mode():
                embeds, mask, _ = model.splice([prompt] * batch, encode(), padding_side="left")
                return generate(model.llm, embeds, mask, GenerationSettings(max_new_tokens=tokens, stop_at_eos=False),
                                eos)

        results[f"encode_s_b{batch}"] = _timed(encode, device, repeat)
        results[f"prefill_s_b{batch}"] = _timed(prefill, device, repeat)
        # decode rate from the difference of a long and a one-token run (prefill and encode cancel out)
        long_run = _timed(lambda: full(new_tokens), device, max(1, repeat // 2))
        one_token = _timed(lambda: full(1), device, repeat)
        results[f"decode_tokens_per_s_b{batch}"] = batch * (new_tokens - 1) / max(long_run - one_token, 1e-9)
    return results


def run(args) -> float:
    if not torch.cuda.is_available():
        print("gpu benchmark needs CUDA: no CUDA device is visible, nothing was measured")
        sys.stdout.flush()
        raise SystemExit(1)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build_random_model(DAMConfig.dam_3b(), device, torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    torch.cuda.reset_peak_memory_stats()
    r = measure(model, device, repeat=args.repeat or 5)
    print(f"{torch.cuda.get_device_name(0)}, DAM-3B preset ({params / 1e9:.2f} B params, random), bfloat16, "
          f"prompt {PROMPT_TOKENS} text + 196 visual tokens, greedy {NEW_TOKENS} new tokens")
    for b in (1, 8):
        print(f"batch {b}: vision encode {r[f'encode_s_b{b}'] * 1000:7.1f} ms | encode + prefill "
              f"{r[f'prefill_s_b{b}'] * 1000:7.1f} ms | decode {r[f'decode_tokens_per_s_b{b}']:8.1f} tokens/s")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return r["decode_tokens_per_s_b8"] / r["decode_tokens_per_s_b1"]
