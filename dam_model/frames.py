"""Which frames of a track DAM describes: the one rule, used by the model (describe_video, training) and by
everything that picks frames before it (the backend, the loop's dataset builder).

DAM's video input is n frames (8 for DAM-3B-Video) spread uniformly over the frames whose mask is non-empty.
With U such usable frames, in order, pick k (k = 0..n-1) is:
- U >= n: the usable frame under the centre of the k-th of n equal segments, position floor((k + 1/2) * U / n).
  Picks are distinct; both ends of the clip are trimmed by half a segment alike (16 frames -> 1, 3, ..., 15;
  15 frames -> 0, 2, ..., 14), and n = 1 picks the middle usable frame;
- U < n: the usable frames stretched over the n slots, position floor(k * U / n). Every usable frame appears
  floor(n / U) or ceil(n / U) times, in order, so DAM still gets exactly n frames (5 usable, n = 8 -> positions
  0, 0, 1, 1, 2, 3, 3, 4).
The release's video demo takes np.linspace(0, U - 1, n) truncated to int when U > n (first and last usable frame
included) and passes fewer than n frames when U <= n. The centres above are as uniform but keep half a segment
(U / 2n frames) off each end, so a pick lies at most about that far from the release's; the backend and the
dataset builder have always used the centres, and the U < n branch gives DAM the n frames its prompt expects.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def sample_frames(masks: Sequence[np.ndarray], n: int = 8) -> list[int]:
    """Indices of the `n` frames to describe (see the module docstring). ValueError when n < 1 or every mask
    is empty."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    usable = [index for index, mask in enumerate(masks) if np.asarray(mask).any()]
    count = len(usable)
    if count == 0:
        raise ValueError(f"no usable frame: all {len(masks)} masks are empty, nothing to describe")
    if count >= n:
        return [usable[((2 * k + 1) * count) // (2 * n)] for k in range(n)]
    return [usable[(k * count) // n] for k in range(n)]


def sample_frame_indices(masks: Sequence[np.ndarray], n: int) -> list[int]:
    """`sample_frames(masks, n)` as ints, or [] when every mask is empty (a track with nothing to describe): how
    the backend and the bulk job pick a track's frames."""
    if not any(np.any(m) for m in masks):
        return []
    return [int(i) for i in sample_frames(masks, n)]


select_video_frames = sample_frames  # the model's name for the same rule (modeling, training)
