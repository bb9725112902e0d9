"""EmbeddingCache single flight under threads, without SAM: concurrent first requests for one image run the encoder
once; different images encode side by side (the cache lock is not held while encoding)."""
from __future__ import annotations

import threading
import time

import numpy as np

from dam_model.segmentation import EmbeddingCache, image_key


def test_concurrent_first_requests_encode_each_image_once_and_images_in_parallel():
    cache: EmbeddingCache[np.ndarray] = EmbeddingCache(capacity_bytes=1 << 20)
    images = [np.full((20, 30, 3), value, dtype=np.uint8) for value in (1, 2)]
    encoder_calls: list[str] = []
    calls_lock = threading.Lock()
    both_encoding = threading.Barrier(2, timeout=5)  # broken (an error) unless the two encodes overlap

    def encode(image: np.ndarray) -> np.ndarray:
        with calls_lock:
            encoder_calls.append(image_key(image))
        both_encoding.wait()
        time.sleep(0.1)  # the other requests arrive while this encode runs
        return image.astype(np.float32).mean(axis=2)

    barrier = threading.Barrier(16)
    results: list = [None] * 16

    def click(i: int) -> None:
        image = images[i % 2].copy()  # each request decoded its own copy: same content, other buffer
        barrier.wait()
        results[i] = cache.get_or_compute(image_key(image), lambda: encode(image))

    threads = [threading.Thread(target=click, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(encoder_calls) == sorted(image_key(image) for image in images)  # once per image
    assert all(float(results[i][0, 0]) == float(1 + i % 2) for i in range(16))
    stats = cache.stats()
    assert (stats.misses, stats.hits, stats.entries) == (2, 14, 2)


def test_single_flight_holds_with_caching_disabled():
    cache: EmbeddingCache[int] = EmbeddingCache(capacity_bytes=0, sizeof=lambda v: 1)
    calls = []
    barrier = threading.Barrier(6)

    def compute() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 7

    def ask() -> None:
        barrier.wait()
        assert cache.get_or_compute("k", compute) == 7

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and len(cache) == 0  # shared while in flight, kept nowhere
