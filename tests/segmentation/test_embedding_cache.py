"""Embedding cache: hits skip the encoder, eviction by a byte cap, one computation under concurrency."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dam_model.segmentation import EmbeddingCache, Sam2Segmenter, image_key

from .conftest import textured_background


@pytest.fixture()
def counted_forward_image(sam_model, monkeypatch):
    """Counts calls of the model's real image encoder (SAM2Base.forward_image)."""
    calls = []
    original = sam_model.forward_image

    def counting(pixels):
        calls.append(tuple(pixels.shape))
        return original(pixels)

    monkeypatch.setattr(sam_model, "forward_image", counting)
    return calls


def test_second_click_skips_the_encoder(segmenter, counted_forward_image):
    image = textured_background(45, 67)
    segmenter.predict(image, points=[[10, 10]], labels=[1])
    segmenter.predict(image, points=[[30, 20], [5, 5]], labels=[1, 0])
    segmenter.predict(image.copy(), box=[1, 1, 40, 30])  # same content, different buffer: still a hit
    assert len(counted_forward_image) == 1
    stats = segmenter.cache_stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.entries) == (2, 1, 0, 1)
    assert stats.bytes > 0
    segmenter.predict(textured_background(45, 67, seed=9), points=[[10, 10]], labels=[1])
    assert len(counted_forward_image) == 2
    assert segmenter.cache_stats().misses == 2


def test_eviction_by_byte_cap(sam_model, counted_forward_image):
    probe = Sam2Segmenter(sam_model)
    one_entry = probe.embed(textured_background(20, 20)).image_embed  # noqa: F841 - computes sizes below
    entry_bytes = probe.cache_stats().bytes
    segmenter = Sam2Segmenter(sam_model, cache_bytes=2 * entry_bytes)  # room for exactly two embeddings
    a, b, c = (textured_background(30, 40, seed=s) for s in (1, 2, 3))
    for image in (a, b, a, c):  # c evicts b (a was used more recently)
        segmenter.predict(image, points=[[5, 5]], labels=[1])
    stats = segmenter.cache_stats()
    assert (stats.misses, stats.hits, stats.evictions, stats.entries) == (3, 1, 1, 2)
    assert stats.bytes == 2 * entry_bytes <= stats.capacity_bytes
    before = len(counted_forward_image)
    segmenter.predict(a, points=[[6, 6]], labels=[1])  # still cached
    assert len(counted_forward_image) == before
    segmenter.predict(b, points=[[6, 6]], labels=[1])  # evicted: encoded again
    assert len(counted_forward_image) == before + 1


def test_zero_capacity_disables_caching(sam_model, counted_forward_image):
    segmenter = Sam2Segmenter(sam_model, cache_bytes=0)
    image = textured_background(30, 40)
    segmenter.predict(image, points=[[5, 5]], labels=[1])
    segmenter.predict(image, points=[[5, 5]], labels=[1])
    assert len(counted_forward_image) == 2
    assert segmenter.cache_stats().entries == 0


def test_concurrent_clicks_on_one_image_encode_once(segmenter, counted_forward_image):
    image = textured_background(45, 67, seed=5)
    barrier = threading.Barrier(4)
    results, errors = [], []

    def click(x: int) -> None:
        try:
            barrier.wait()
            results.append(segmenter.predict(image, points=[[x, 10]], labels=[1]))
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=click, args=(5 + 10 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4
    assert len(counted_forward_image) == 1
    stats = segmenter.cache_stats()
    assert stats.misses == 1 and stats.hits == 3


# ---------------------------------------------------------------------------------------------- the cache alone
def test_image_key_depends_on_content_and_shape():
    image = textured_background(8, 12)
    assert image_key(image) == image_key(image.copy())
    assert image_key(image) != image_key(image.reshape(12, 8, 3))
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert image_key(image) != image_key(changed)


def test_lru_order_and_oversized_values():
    cache: EmbeddingCache[np.ndarray] = EmbeddingCache(capacity_bytes=300)
    block = lambda: np.zeros(100, dtype=np.uint8)  # noqa: E731 - 100 bytes each
    for key in "abc":
        cache.get_or_compute(key, block)
    cache.get_or_compute("a", block)  # refresh a
    cache.get_or_compute("d", block)  # evicts b, the least recently used
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.get_or_compute("huge", lambda: np.zeros(301, dtype=np.uint8))  # bigger than the cap: not kept
    assert "huge" not in cache and len(cache) == 3
    stats = cache.stats()
    assert (stats.evictions, stats.bytes) == (1, 300)


def test_waiters_see_the_owner_error_and_the_key_stays_computable():
    cache: EmbeddingCache[int] = EmbeddingCache(capacity_bytes=10, sizeof=lambda v: 1)
    started = threading.Event()

    def failing() -> int:
        started.set()
        time.sleep(0.2)
        raise RuntimeError("encoder failed")

    errors = []

    def waiter() -> None:
        started.wait()
        try:
            cache.get_or_compute("k", lambda: 1)
        except RuntimeError as error:
            errors.append(str(error))

    thread = threading.Thread(target=waiter)
    thread.start()
    with pytest.raises(RuntimeError, match="encoder failed"):
        cache.get_or_compute("k", failing)
    thread.join()
    assert errors == ["encoder failed"]
    assert cache.get_or_compute("k", lambda: 7) == 7


def test_negative_capacity_rejected():
    with pytest.raises(ValueError, match="capacity_bytes"):
        EmbeddingCache(-1)
