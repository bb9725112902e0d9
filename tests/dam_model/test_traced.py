"""The traced hot paths (dam_model/traced.py) against the eager ones they replace: transformers' Llama forward for
the decode step and the unpadded prefill, DescribeAnythingModel.encode_images for the focal encoder; and the
helpers that took Python off the decode thread (prompt ids kept per query, sentencepiece caption decoding)."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from dam_model.generation import decode_text
from dam_model.synthetic import generate_dataset, iter_region_samples
from dam_model.tokenizer import load_tokenizer
from dam_model.packed_rows import PackedRows
from dam_model.traced import LeanStep, unsupported_reason

LLAMAS = {
    "plain": {},
    "grouped heads, biases": {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True},
    "llama3 rope scaling, tied embeddings": {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32},
        "tie_word_embeddings": True},
}


def tiny_llama(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, head_dim=16, max_position_embeddings=256, **overrides)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def eager_prefill(llm, embeds, mask):
    cache = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
              use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float(), cache, positions[:, -1:] + 1


@pytest.mark.parametrize("name", list(LLAMAS))
@torch.inference_mode()
def test_step_and_prefill_match_transformers(name):
    llm = tiny_llama(**LLAMAS[name])
    assert unsupported_reason(llm) is None
    capacities = set()
    for per_call in (1, 3):
        lean = LeanStep(llm, tokens_per_call=per_call)
        for rows, length in [(1, 5), (3, 9), (6, 31)]:  # traced on 2 rows and 3 tokens: other shapes must hold
            embeds = torch.randn(rows, length, llm.config.hidden_size)
            mask = torch.ones(rows, length, dtype=torch.long)
            logits, cache, position = eager_prefill(llm, embeds, mask)
            tokens, logprobs, kv = lean.prefill(embeds)
            assert torch.equal(tokens, logits.argmax(-1))
            torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0])
            for layer, (k, v) in enumerate(zip(kv[0::2], kv[1::2])):
                torch.testing.assert_close(k, cache.layers[layer].keys)
                torch.testing.assert_close(v, cache.layers[layer].values)
            mask[0, :1] = 0  # the left padding a session holds once rows of other lengths joined
            packed, last = PackedRows(kv, mask, position, tokens, per_call), tokens
            out = packed.out.clone()  # the call writes into its inputs and hands back `out` itself: no new tensor
            assert lean(packed.state.clone(), packed.kv.clone(), out) is out
            for _ in range(2):  # one token at a time, (6, 31) fills its block of cache columns: a new block
                capacities.add(packed.kv.shape[3])
                got_tokens, got_logprobs = packed.step(lean)
                want_tokens, want_logprobs = [], []
                for _ in range(per_call):  # transformers, one token at a time
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                    want = llm(input_ids=last[:, None], attention_mask=mask.bool()[:, None, None, :],
                               position_ids=position, past_key_values=cache, use_cache=True).logits[:, -1].float()
                    last, position = want.argmax(-1), position + 1
                    want_tokens.append(last)
                    want_logprobs.append(torch.log_softmax(want, -1).gather(1, last[:, None])[:, 0])
                assert got_tokens == torch.stack(want_tokens, 1).tolist()
                torch.testing.assert_close(torch.tensor(got_logprobs, dtype=torch.float32),
                                           torch.stack(want_logprobs, 1))
                assert torch.equal(packed.mask, mask) and torch.equal(packed.state[:, 1:2], position)
                for layer, (k, v) in enumerate(zip(packed.kv[0::2], packed.kv[1::2])):
                    torch.testing.assert_close(k[:, :, :packed.length], cache.layers[layer].keys)
                    torch.testing.assert_close(v[:, :, :packed.length], cache.layers[layer].values)
                    assert not k[:, :, packed.length:].any()  # free columns stay empty
    assert len(capacities) > 1


def test_unsupported_llms_say_why():
    assert "changes with the sequence length" in unsupported_reason(
        tiny_llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert "silu" in unsupported_reason(tiny_llama(hidden_act="gelu"))
    assert "training" in unsupported_reason(tiny_llama().train())
    assert "not LlamaForCausalLM" in unsupported_reason(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def regions():
    return [(s.image, s.mask) for s in list(iter_region_samples(generate_dataset(seed=41, n=6)))[:10]]


@torch.inference_mode()
def test_focal_encoder_matches_encode_images(trained_dam, regions):
    for count in (1, 3, 5):
        batch = trained_dam.prepare_regions(regions[0][0], [regions[0][1]] * count)
        pixels = batch.pixel_values[:count]
        assert bool(batch.is_focal.all())
        torch.testing.assert_close(trained_dam.focal_encoder()(pixels),
                                   trained_dam.encode_images(pixels, batch.is_focal))


@pytest.mark.parametrize("max_new_tokens", [48, 7])
def test_sessions_with_and_without_the_traced_paths_agree(trained_dam, regions, max_new_tokens):
    """The same admissions (one query: the traced prefill; mixed queries: padding, transformers' prefill) and steps
    give the same ids and scores either way, however many tokens a traced step takes (rows end inside a call)."""
    brief = "<image>\nDescribe the masked region briefly."
    queries = [None] * 4 + [brief, None, brief, None, None, brief]
    outcome = {}
    for lean, per_call in ((False, 1), (True, 1), (True, 3), (True, 4)):
        session, got = trained_dam.caption_session(max_new_tokens, lean=lean, tokens_per_call=per_call), {}
        assert (session.decoder.lean is not None) == lean
        for start in range(0, len(regions), 3):
            rows = range(start, min(start + 3, len(regions)))
            got.update(session.admit([(*regions[i], queries[i]) for i in rows], list(rows)))
            got.update(session.step())
        while session.rows:
            got.update(session.step())
        outcome[lean, per_call] = {i: (c.token_ids, round(c.confidence, 5), c.text) for i, c in got.items()}
    eager = outcome.pop((False, 1))
    assert len(eager) == len(regions) and max(len(ids) for ids, _, _ in eager.values()) <= max_new_tokens
    assert all(traced == eager for traced in outcome.values())


def test_a_training_model_decodes_eagerly(trained_dam):
    trained_dam.train()
    try:
        assert trained_dam.lean_step() is None and trained_dam.focal_encoder() is None
    finally:
        trained_dam.eval()
    assert trained_dam.lean_step() is trained_dam.lean_step()  # made once per device, dtype and tokens per call
    assert trained_dam.lean_step(2).tokens_per_call == 2


def test_prompt_ids_are_kept_per_query_and_handed_out_fresh(trained_dam):
    first = trained_dam._prompt_ids(None)
    first.append(-1)
    assert trained_dam._prompt_ids(None) == first[:-1]
    assert trained_dam._prompt_ids("<image>\nWhat colour is it?") != first[:-1]


def test_decode_text_equals_the_tokenizers_decode(trained_dam_dir):
    tokenizer = load_tokenizer(trained_dam_dir)
    rng = random.Random(0)
    specials = list(tokenizer.all_special_ids)
    for _ in range(500):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(0, 25))]
        ids[rng.randrange(len(ids) + 1):rng.randrange(len(ids) + 1)] = [rng.choice(specials)]  # a special inside
        assert decode_text(tokenizer, ids).strip() == tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert tokenizer.__dict__["_dam_decode_text"].__name__ == "decode"  # the sentencepiece path was the one tested
    out_of_range = [5, len(tokenizer) + 3]
    with pytest.raises(IndexError):  # ids beyond the vocabulary go to the tokenizer itself, which refuses them
        tokenizer.decode(out_of_range, skip_special_tokens=True)
    with pytest.raises(IndexError):
        decode_text(tokenizer, out_of_range)
