"""Replay for the train step: each night trains on tonight's data plus a share of earlier nights' data, so the
fine-tune does not forget what earlier rounds taught (``--replay-ratio``, env REPLAY_RATIO, default 0.2;
documented on dam_loop.gate.GateSettings.replay_ratio, which the promotion record carries).

The dataset is cumulative (every export object ever pulled), and each row names the pull snapshot that
downloaded its object (``object_snapshot``, written by the build step). So:

- tonight's rows: human rows whose object this dataset's snapshot downloaded (new or changed annotations), all
  pseudo-labelled rows (made tonight), and rows of datasets built before rows carried ``object_snapshot``;
- the replay pool: the other human rows of the TRAIN split, i.e. earlier nights' training data. The validation
  split and the regression set are never trained on, replayed or not.

With ratio r and n rows tonight, training takes tonight's rows plus round(n * r / (1 - r)) replay rows: a seeded
sample of the pool without repeats when it is large enough, else the whole pool repeated as often as needed.
Training draws batches from a seeded permutation of that list, so a batch holds r replay rows in expectation
(exactly r over every epoch). r = 0 trains on tonight's rows only; a night without new rows (e.g. only deletions)
trains on the pool.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def split_tonight(rows: list[dict[str, Any]], snapshot_id: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tonight's rows, the replay pool) of a dataset's training rows (see the module docstring)."""
    tonight, pool = [], []
    for row in rows:
        origin = row.get("object_snapshot")
        earlier = row.get("source", "human") == "human" and origin is not None and origin != snapshot_id
        (pool if earlier else tonight).append(row)
    return tonight, pool


def replay_seed(seed: int, snapshot_id: str | None) -> list[int]:
    """Seed of the replay sample: the training seed and the snapshot, so each night replays other rows."""
    return [seed, int(hashlib.sha256(str(snapshot_id).encode()).hexdigest()[:8], 16)]


def mix_replay(tonight: list[dict[str, Any]], pool: list[dict[str, Any]], ratio: float,
               seed: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(training rows, record of the mix for the provenance) for replay ratio ``ratio`` in [0, 1)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
    info: dict[str, Any] = {"ratio": ratio, "tonight": len(tonight), "pool": len(pool)}
    if not tonight:
        return list(pool), {**info, "replayed": len(pool), "replayed_unique": len(pool),
                            "note": "no new rows tonight: trained on earlier data only"}
    wanted = round(len(tonight) * ratio / (1 - ratio)) if pool else 0
    rng = np.random.default_rng(seed)
    full, rest = divmod(wanted, len(pool)) if pool else (0, 0)
    picked = [i for _ in range(full) for i in range(len(pool))]
    picked += sorted(rng.choice(len(pool), size=rest, replace=False).tolist()) if rest else []
    replayed = [pool[i] for i in picked]
    return tonight + replayed, {**info, "replayed": len(replayed), "replayed_unique": len(set(picked)),
                                "share": round(len(replayed) / (len(tonight) + len(replayed)), 4)}
