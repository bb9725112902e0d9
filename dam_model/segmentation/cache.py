"""A thread-safe LRU cache of image embeddings, capped in bytes.

Keyed by image content (a hash of the pixel bytes plus shape and dtype), so repeated clicks on the
same image, from any request thread, skip the image encoder. Concurrent requests for an image that
is being encoded wait for that one computation instead of starting their own.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Hashable, TypeVar

import numpy as np

V = TypeVar("V")


def image_key(image: np.ndarray) -> str:
    """Content key of an image: blake2b-128 of its bytes, plus shape and dtype (so a reshape never collides)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(array.data, digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    return digest.hexdigest()


def tensor_nbytes(value: Any) -> int:
    """Bytes held by the tensors/arrays inside `value` (nested dicts, lists, tuples, dataclass-like objects)."""
    if hasattr(value, "element_size") and hasattr(value, "numel"):  # torch.Tensor
        return int(value.element_size() * value.numel())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(tensor_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_nbytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(tensor_nbytes(v) for v in vars(value).values())
    return 0


@dataclass(frozen=True)
class CacheStats:
    """Counters of an EmbeddingCache. bytes/capacity_bytes count tensor payload only (nbytes)."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    capacity_bytes: int


class _Pending:
    """A computation in flight: other threads wait on `done` and read `value` or `error`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class EmbeddingCache(Generic[V]):
    """LRU of values (embeddings) with a memory cap in bytes.

    `get_or_compute(key, compute)` returns the cached value or runs `compute()` once per key even when
    several threads ask at the same time. A value larger than the whole cap is returned but not kept.
    capacity_bytes = 0 disables caching (every call computes).
    """

    def __init__(self, capacity_bytes: int, sizeof: Callable[[Any], int] = tensor_nbytes) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self._sizeof = sizeof
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Hashable, tuple[V, int]]" = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """Cached value for `key`, computing it (once across threads) on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry[0]
            pending = self._pending.get(key)
            if pending is None:
                owner = True
                pending = self._pending[key] = _Pending()
                self._misses += 1
            else:
                owner = False
                self._hits += 1  # served by another thread's encoder run
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            value = compute()
        except BaseException as error:
            pending.error = error
            with self._lock:
                del self._pending[key]
            pending.done.set()
            raise
        pending.value = value
        with self._lock:
            del self._pending[key]
            self._store(key, value)
        pending.done.set()
        return value

    def _store(self, key: Hashable, value: V) -> None:
        size = int(self._sizeof(value))
        if size > self.capacity_bytes:
            return  # larger than the whole cache: keeping it would evict everything for nothing
        while self._entries and self._bytes + size > self.capacity_bytes:
            _, (_, old_size) = self._entries.popitem(last=False)
            self._bytes -= old_size
            self._evictions += 1
        self._entries[key] = (value, size)
        self._bytes += size

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                entries=len(self._entries),
                bytes=self._bytes,
                capacity_bytes=self.capacity_bytes,
            )
