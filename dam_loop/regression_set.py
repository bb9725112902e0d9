"""The regression set: a frozen sample of earlier validation data on which a candidate must not be worse than the
champion (the gate's non-inferiority check, dam_loop.gate.check_regression). Training never reads it.

``<work root>/regression_set/`` (``--regression-set``, env REGRESSION_SET), a dataset folder in dam_loop.dataset's
format whose rows all have ``split: "regression"``::

    samples.jsonl   image regions, two sources (``source``):
                    "synthetic_benchmark": every region of ``--regression-synthetic-scenes`` scenes of the synthetic
                      benchmark (dam_model.synthetic, seed REGRESSION_SEED 5150: used nowhere else), reference long
                      captions and attribute records (the exact judge scores them). The benchmark draws all six shapes
                      (its categories), so a night whose data holds only squares still checks circles and stars;
                    "validation": up to ``--regression-val-regions`` human validation regions of the loop's own
                      datasets (a seeded sample, pixels copied), so real data without attributes is covered too.
    images/ masks/  PNG files of those rows
    dataset.json    {"kind": "regression_set", "created_at", "updated_at", "sources", "counts", "categories"}

Frozen: a region once in the set never changes or leaves. The synthetic part is written when the set is created;
the validation part is topped up from later nights' validation splits (regions not in it yet) until it holds
``--regression-val-regions`` of them, so a small first night does not leave it too small for good. Delete the
folder to start a new set (the next night makes one). For a real deployment whose model does not speak the
synthetic grammar, set REGRESSION_SYNTHETIC_SCENES=0: the set then holds validation regions only, scored like the
validation split (1 - word edit distance where no attribute record exists).
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from dam_loop.cli import env_default, env_int
from dam_loop.dataset import DatasetWriter, is_built, load_samples, pixels_hash, read_info
from dam_loop.provenance import utc_iso
from dam_model.data import KIND_IMAGE, read_image, read_mask
from dam_model.synthetic import generate_dataset

REGRESSION_SEED = 5150  # the synthetic benchmark's seed for this set: no training or tuning uses it
SPLIT = "regression"
SYNTHETIC, VALIDATION = "synthetic_benchmark", "validation"
# ~360 regions: every shape many times, and with the validation part (~420) enough for the non-inferiority
# interval to be ~+-0.02 (per-region differences spread with sd ~0.2; see GateSettings.regression_margin)
DEFAULT_SYNTHETIC_SCENES = 100
DEFAULT_VAL_REGIONS = 60


def region_category(row: dict[str, Any]) -> str | None:
    """A region's category for per-category accuracy: the synthetic shape when the row has attributes, else its
    Label Studio label."""
    attributes = row.get("attributes") or {}
    return attributes.get("shape") or row.get("category")


def synthetic_rows(writer: DatasetWriter, n_scenes: int) -> list[dict[str, Any]]:
    """Every region of scenes (REGRESSION_SEED, 0..n_scenes-1), pixels written through ``writer``."""
    rows = []
    for scene in generate_dataset(REGRESSION_SEED, n_scenes):
        image_rel = f"images/{pixels_hash(scene.image)[:16]}.png"
        if not writer.has(image_rel):
            writer.write_image(image_rel, scene.image)
        for index, obj in enumerate(scene.objects):
            sample_id = f"synthetic-{REGRESSION_SEED}-{scene.index}-{index}"
            writer.write_mask(f"masks/{sample_id}.png", obj.mask)
            rows.append({"kind": KIND_IMAGE, "id": sample_id, "image": image_rel, "mask": f"masks/{sample_id}.png",
                         "caption": obj.long_caption, "short_caption": obj.short_caption, "source": SYNTHETIC,
                         "split": SPLIT, "attributes": obj.attributes, "category": obj.attributes["shape"],
                         "width": scene.width, "height": scene.height})
    return rows


def pick_validation_rows(dataset_dir: Path, have: set[str], wanted: int, seed: str) -> list[dict[str, Any]]:
    """Up to ``wanted`` human validation image rows of the dataset not in the set yet, a sample seeded by ``seed``
    (stable for a given dataset)."""
    if wanted <= 0:
        return []
    rows = [r for r in load_samples(dataset_dir, "val", include_pseudo=False)
            if r.get("source", "human") == "human" and f"val-{r['id']}" not in have]
    order = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)).permutation(len(rows))
    return [rows[i] for i in sorted(order[:wanted])]


def copy_rows(writer: DatasetWriter, folder: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of another dataset folder (or of the set itself) copied with their pixels into ``writer``."""
    out = []
    for row in rows:
        if not writer.has(row["image"]):
            writer.write_image(row["image"], read_image(folder / row["image"]))
        writer.write_mask(row["mask"], read_mask(folder / row["mask"]))
        out.append({k: v for k, v in row.items() if k not in ("image_path", "mask_path")})
    return out


def ensure_regression_set(folder: Path, dataset_dir: Path | None, synthetic_scenes: int = DEFAULT_SYNTHETIC_SCENES,
                          val_regions: int = DEFAULT_VAL_REGIONS) -> Path | None:
    """Create the set (synthetic part + validation sample of ``dataset_dir``) or top up its validation part;
    returns the folder, or None when it would hold nothing. Existing rows are kept exactly as they are."""
    folder = Path(folder)
    existing = load_samples(folder, SPLIT, include_pseudo=False) if is_built(folder) else []
    info = read_info(folder) if existing else {"kind": "regression_set", "created_at": utc_iso(), "sources": []}
    have = {r["id"] for r in existing}
    missing_val = val_regions - sum(r["source"] == VALIDATION for r in existing)
    new_val = (pick_validation_rows(dataset_dir, have, missing_val, str(Path(dataset_dir).name))
               if dataset_dir is not None else [])
    add_synthetic = not existing and synthetic_scenes > 0
    if existing and not new_val:
        return folder  # nothing to add: not even rewritten
    if not existing and not new_val and not add_synthetic:
        return None
    writer = DatasetWriter(folder)
    try:
        rows = copy_rows(writer, folder, existing)
        if add_synthetic:
            rows += synthetic_rows(writer, synthetic_scenes)
            info["sources"].append({"source": SYNTHETIC, "seed": REGRESSION_SEED, "scenes": synthetic_scenes,
                                    "added_at": utc_iso()})
        if new_val:
            added = copy_rows(writer, Path(dataset_dir), new_val)
            rows += [{**r, "id": f"val-{r['id']}", "split": SPLIT, "source": VALIDATION,
                      "from_dataset": Path(dataset_dir).name} for r in added]
            info["sources"].append({"source": VALIDATION, "dataset": Path(dataset_dir).name, "regions": len(added),
                                    "added_at": utc_iso()})
        categories: dict[str, int] = {}
        for row in rows:
            name = str(region_category(row))
            categories[name] = categories.get(name, 0) + 1
        info.update(updated_at=utc_iso(), frozen_rule="rows are never changed or removed; validation part topped up",
                    counts={"samples": len(rows), SYNTHETIC: sum(r["source"] == SYNTHETIC for r in rows),
                            VALIDATION: sum(r["source"] == VALIDATION for r in rows)},
                    categories=dict(sorted(categories.items())))
        return writer.commit(rows, [], [], info)
    finally:
        writer.discard()


def load_regression_rows(folder: Path | None) -> list[dict[str, Any]]:
    """The set's rows with absolute image_path / mask_path ([] without a set)."""
    if folder is None or not is_built(Path(folder)):
        return []
    return load_samples(Path(folder), SPLIT, include_pseudo=False)


# ----------------------------------------------------------------------------------------------- CLI
def add_regression_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("regression set (dam_loop.regression_set)")
    g.add_argument("--regression-set", default=env_default("REGRESSION_SET"),
                   help="folder of the frozen regression set (env REGRESSION_SET; default <work root>/regression_set; "
                        "'none' turns the check off)")
    g.add_argument("--regression-synthetic-scenes", type=int,
                   default=env_int("REGRESSION_SYNTHETIC_SCENES", DEFAULT_SYNTHETIC_SCENES),
                   help="synthetic benchmark scenes in a NEW set (env REGRESSION_SYNTHETIC_SCENES; 0 for models that "
                        f"do not speak the synthetic grammar; default {DEFAULT_SYNTHETIC_SCENES})")
    g.add_argument("--regression-val-regions", type=int, default=env_int("REGRESSION_VAL_REGIONS", DEFAULT_VAL_REGIONS),
                   help=f"validation regions the set samples from the loop's data (env REGRESSION_VAL_REGIONS; "
                        f"default {DEFAULT_VAL_REGIONS})")


def regression_folder(args: argparse.Namespace, work_root: Path) -> Path | None:
    """The set's folder from the flags: None when turned off."""
    if (args.regression_set or "").lower() == "none":
        return None
    return Path(args.regression_set) if args.regression_set else Path(work_root) / "regression_set"
