"""The dataset folder: the build step writes it, pseudo_label adds to it, train and evaluate read it.

``<work root>/datasets/<snapshot id>/``::

    samples.jsonl        one human-captioned IMAGE region per line (``kind: "image"``): id, image, mask (paths
                         relative to the folder), caption, category, labels, split ("train" | "val"), task_id,
                         annotation_id, region_id, updated_at, source="human", width, height, key, attributes (when
                         the task has them), object_snapshot (the pull snapshot that downloaded the export object:
                         this dataset's snapshot id = tonight's data, another = an earlier night's; video rows too)
    unlabeled.jsonl      image regions without a caption (pseudo-labelling candidates), same fields minus caption
    pseudo.jsonl         pseudo-labelled image regions (source="pseudo", split "train"), written by pseudo_label
    video_samples.jsonl  one human-captioned VIDEO track per line (``kind: "video"``): frames and masks (one path per
                         sampled frame), frame_indices, boxes, num_frames, caption, split, ... (see steps.build)
    images/ masks/       PNG (RGB images; masks 0/255, L mode; read back with dam_model.data: foreground > 127)
    frames/              PNG video frames, ``<video sha256[:16]>-<0-based frame index:06d>.png``
    dataset.json         counts (image and ``video_*``), snapshot id, split rule, skipped items with reasons

Rows are the dam_model.data row format (``kind``, relative pixel paths, ``caption``) plus the loop's own keys; the
split is sticky (``split_for``), so a task never changes side between runs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dam_loop.cli import BadArguments
from dam_model.data import (KIND_IMAGE, KIND_VIDEO, RegionSample, Sample, TrackSample, read_image, read_mask,
                            write_image, write_mask)
from dam_model.fileio import atomic_replace_dir, atomic_write_json, read_json, read_jsonl, write_jsonl

SAMPLES_FILE = "samples.jsonl"
UNLABELED_FILE = "unlabeled.jsonl"
PSEUDO_FILE = "pseudo.jsonl"
VIDEO_SAMPLES_FILE = "video_samples.jsonl"
INFO_FILE = "dataset.json"
PIXEL_FOLDERS = ("images", "masks", "frames")
SPLIT_RULE = "val iff int(sha256('task:<task id>')[:8], 16) / 2**32 < val_fraction"


def split_for(task_id: Any, val_fraction: float) -> str:
    """Sticky split: 'val' when sha256('task:<id>') maps below val_fraction, else 'train'. Never changes between runs."""
    bucket = int(hashlib.sha256(f"task:{task_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def pixels_hash(array: np.ndarray) -> str:
    """sha256 of an array's shape and bytes: names image and mask files by content (duplicates share one file)."""
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- writer
class DatasetWriter:
    """A dataset being built in a staging folder beside ``out_dir``; ``commit`` swaps it into place whole, so a
    reader never sees half a dataset. Pixel files are written as they come and pruned to the rows at the end."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.staging = self.out_dir.parent / f".staging-{self.out_dir.name}-{os.getpid()}"
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in PIXEL_FOLDERS:
            (self.staging / folder).mkdir(parents=True)

    def has(self, rel: str) -> bool:
        return (self.staging / rel).exists()

    def write_image(self, rel: str, image: np.ndarray) -> None:
        write_image(self.staging / rel, image)

    def write_mask(self, rel: str, mask: np.ndarray) -> None:
        write_mask(self.staging / rel, mask)

    def commit(self, samples: list[dict[str, Any]], unlabeled: list[dict[str, Any]], videos: list[dict[str, Any]],
               info: dict[str, Any]) -> Path:
        """Drop pixel files no row uses, write the row files and dataset.json, then put the folder at out_dir."""
        image_rows = samples + unlabeled
        used = {r["image"] for r in image_rows} | {r["mask"] for r in image_rows}
        used |= {path for r in videos for path in r["frames"] + r["masks"]}
        for folder in PIXEL_FOLDERS:
            for file in (self.staging / folder).iterdir():
                if f"{folder}/{file.name}" not in used:
                    file.unlink()
        write_jsonl(self.staging / SAMPLES_FILE, samples)
        write_jsonl(self.staging / UNLABELED_FILE, unlabeled)
        write_jsonl(self.staging / VIDEO_SAMPLES_FILE, videos)
        atomic_write_json(self.staging / INFO_FILE, info)
        atomic_replace_dir(self.staging, self.out_dir)
        return self.out_dir

    def discard(self) -> None:
        """Remove the staging folder (gone already after a commit)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def write_pseudo(dataset_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the dataset's pseudo-labelled rows."""
    write_jsonl(Path(dataset_dir) / PSEUDO_FILE, rows)


# ----------------------------------------------------------------------------------------------- reader
def is_video(row: dict[str, Any]) -> bool:
    """A video track row (video_samples.jsonl) rather than an image region."""
    return row.get("kind") == KIND_VIDEO


def latest_dataset_dir(work_root: Path) -> Path:
    """The dataset folder of the latest pulled snapshot (``<work root>/datasets/<snapshot id>``)."""
    manifest = Path(work_root) / "manifest.json"
    if not manifest.exists():
        raise BadArguments("no --dataset and no pulled snapshot in the work root")
    return Path(work_root) / "datasets" / read_json(manifest)["snapshot_id"]


def is_built(dataset_dir: Path) -> bool:
    return (Path(dataset_dir) / INFO_FILE).exists()


def require_built(dataset_dir: Path) -> Path:
    """``dataset_dir`` when it holds a finished dataset, else BadArguments."""
    if not is_built(dataset_dir):
        raise BadArguments(f"{dataset_dir} is not a built dataset (no {INFO_FILE}): run the build step first")
    return Path(dataset_dir)


def read_info(dataset_dir: Path) -> dict[str, Any]:
    """dataset.json: counts, snapshot id, split rule, skipped items."""
    return read_json(Path(dataset_dir) / INFO_FILE)


def read_rows(dataset_dir: Path, file: str, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of one row file as stored (paths relative to the folder), optionally one split. Image rows written
    before rows carried ``kind`` read as ``kind: "image"``."""
    rows = read_jsonl(Path(dataset_dir) / file)
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    if file != VIDEO_SAMPLES_FILE:
        for row in rows:
            row.setdefault("kind", KIND_IMAGE)
    return rows


def load_samples(dataset_dir: Path, split: str | None = None, include_pseudo: bool = True) -> list[dict[str, Any]]:
    """Image rows of samples.jsonl (+ pseudo.jsonl for the train split) with absolute ``image_path`` / ``mask_path``."""
    dataset_dir = Path(dataset_dir)
    rows = read_rows(dataset_dir, SAMPLES_FILE, split)
    if include_pseudo and split in (None, "train"):
        rows += read_rows(dataset_dir, PSEUDO_FILE, split)
    for row in rows:
        row["image_path"] = str(dataset_dir / row["image"])
        row["mask_path"] = str(dataset_dir / row["mask"])
    return rows


def load_video_samples(dataset_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of video_samples.jsonl (kind "video") with absolute ``frame_paths`` / ``mask_paths`` (one per picked frame)."""
    dataset_dir = Path(dataset_dir)
    rows = read_rows(dataset_dir, VIDEO_SAMPLES_FILE, split)
    for row in rows:
        row["frame_paths"] = [str(dataset_dir / rel) for rel in row["frames"]]
        row["mask_paths"] = [str(dataset_dir / rel) for rel in row["masks"]]
    return rows


def read_video_sample(row: dict[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(frames HxWx3 uint8, masks HxW bool) of a load_video_samples row, in order: the input of describe_video."""
    return [read_image(p) for p in row["frame_paths"]], [read_mask(p) for p in row["mask_paths"]]


def read_samples(dataset_dir: Path, rows: Iterable[dict[str, Any]]) -> list[Sample]:
    """The dam_model.data samples of rows (image regions and video tracks); an image or frame file shared by
    several rows is decoded once and shared."""
    dataset_dir = Path(dataset_dir)
    pixels: dict[str, np.ndarray] = {}

    def image(rel: str) -> np.ndarray:
        if rel not in pixels:
            pixels[rel] = read_image(dataset_dir / rel)
        return pixels[rel]

    out: list[Sample] = []
    for row in rows:
        common = dict(caption=row["caption"], short_caption=row.get("short_caption"),
                      attributes=row.get("attributes"), size_bucket=row.get("size_bucket"))
        if is_video(row):
            out.append(TrackSample([image(rel) for rel in row["frames"]],
                                   [read_mask(dataset_dir / rel) for rel in row["masks"]], **common))
        else:
            out.append(RegionSample(image(row["image"]), read_mask(dataset_dir / row["mask"]), **common))
    return out
