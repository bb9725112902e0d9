"""Step 2 of the loop: turn a pulled snapshot of Label Studio exports into a training dataset folder.

For every non-cancelled annotation (both export formats), each region is the geometry result (brush RLE, polygon or
rectangle, in percent of the image) plus the per-region TextArea result with the SAME id (the caption) and its labels
(the category). Output, in ``<work root>/datasets/<snapshot id>/`` (or ``--out``)::

    samples.jsonl     one human-captioned region per line: id, image, mask (paths relative to the folder), caption,
                      category, split ("train" | "val"), task_id, annotation_id, region_id, updated_at, source="human",
                      width, height, and attributes when the task has them (below)
    unlabeled.jsonl   regions without a caption (inputs for scripts.pseudo_label), same fields minus caption
    images/ masks/    PNG (RGB images; masks 0/255, L mode)
    dataset.json      counts, snapshot id, split rule, skipped items with reasons

Attributes: when the task data hold ``data.attributes = {<region id>: {color, shape, size, position, context,
context_relation, ...}}`` (scripts.export_synthetic writes it), the region's record is copied into its sample as
``attributes`` and scripts.evaluate runs the exact DLC-style judge on it. Real Label Studio tasks have none: the
samples then carry no ``attributes`` and evaluation uses the reference metrics only.

Rules: cancelled annotations and empty captions are skipped; duplicates (same image pixels + same mask pixels) keep the
latest annotation (updated_at, then id); the split is sticky: sha256("task:<task id>") decides, so a task never changes
side between runs (for a fixed --val-fraction). Images are fetched through backend/media.py.

Usage::

    python -m scripts.build --work-root loop_work [--snapshot ID] [--val-fraction 0.2]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from scripts.loop_common import (
    EXIT_FAILURE,
    EXIT_NO_SAMPLES,
    EXIT_PROMOTED,
    BadArguments,
    LoopError,
    add_log_level_arg,
    add_work_root_arg,
    atomic_write_json,
    env_default,
    env_float,
    fraction,
    read_json,
    setup_logging,
    utc_iso,
    write_jsonl,
)

log = logging.getLogger("scripts.build")

GEOMETRY_TYPES = ("brushlabels", "brush", "polygonlabels", "polygon", "rectanglelabels", "rectangle")
LABEL_TYPES = ("labels", "brushlabels", "polygonlabels", "rectanglelabels")

ImageFetcher = Callable[[str, Any], np.ndarray]  # (url or path, task id) -> HxWx3 uint8 RGB


@dataclasses.dataclass
class AnnotationRecord:
    """One exported annotation with its task."""

    key: str
    task_id: Any
    task_data: dict[str, Any]
    annotation: dict[str, Any]
    task_meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def updated_at(self) -> str:
        return str(self.annotation.get("updated_at") or self.annotation.get("created_at") or "")


# ----------------------------------------------------------------------------------------------- parsing
def iter_annotations(export: dict[str, Any], key: str = "") -> Iterator[AnnotationRecord]:
    """Annotations in one export object: per-annotation format ({result, task}) or per-task ({data, annotations})."""
    if "result" in export and isinstance(export.get("task"), dict):
        task = export["task"]
        yield AnnotationRecord(key, task.get("id"), task.get("data") or {}, export, task.get("meta") or {})
    elif "data" in export:
        for annotation in export.get("annotations") or []:
            yield AnnotationRecord(key, export.get("id"), export.get("data") or {}, annotation, export.get("meta") or {})
    else:
        raise ValueError("not a Label Studio export object")


def caption_text(value: dict[str, Any]) -> str:
    text = value.get("text", "")
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    return " ".join(str(text).split())


def group_regions(result: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{region id: {"geometry": result item, "caption": str, "labels": [str]}} in first-seen order."""
    regions: dict[str, dict[str, Any]] = {}
    for item in result or []:
        region_id = str(item.get("id", ""))
        kind = item.get("type", "")
        region = regions.setdefault(region_id, {"geometry": None, "caption": "", "labels": []})
        value = item.get("value") or {}
        if kind in GEOMETRY_TYPES and region["geometry"] is None:
            region["geometry"] = item
        if kind == "textarea":
            region["caption"] = " ".join(filter(None, [region["caption"], caption_text(value)]))
        if kind in LABEL_TYPES and isinstance(value.get(kind), list):
            region["labels"] += [str(label) for label in value[kind] if str(label) not in region["labels"]]
    return {rid: r for rid, r in regions.items() if r["geometry"] is not None}


def rasterize(item: dict[str, Any], height: int, width: int) -> np.ndarray:
    """A geometry result -> uint8 HxW mask (0/255). Percent coordinates from the top-left, as Label Studio writes them."""
    from PIL import Image, ImageDraw

    kind, value = item.get("type", ""), item.get("value") or {}
    if kind in ("brushlabels", "brush"):
        from backend.rle import decode_rle

        if value.get("format", "rle") != "rle":
            raise ValueError(f"unsupported brush format {value.get('format')!r}")
        mask = np.asarray(decode_rle(value["rle"], height, width))
        return np.where(mask > 0, 255, 0).astype(np.uint8)
    if kind in ("polygonlabels", "polygon"):
        points = [(float(x) * width / 100.0, float(y) * height / 100.0) for x, y in value["points"]]
        if len(points) < 3:
            raise ValueError("polygon with fewer than 3 points")
    elif kind in ("rectanglelabels", "rectangle"):
        x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
        w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
        angle = math.radians(float(value.get("rotation") or 0.0))  # Label Studio rotates about the top-left corner
        cos, sin = math.cos(angle), math.sin(angle)
        points = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    else:
        raise ValueError(f"unsupported region type {kind!r}")
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas, dtype=np.uint8)


def image_url(task_data: dict[str, Any], geometry: dict[str, Any], image_key: str | None) -> str:
    """The task's image reference: --image-key, else the data key named like the region's to_name, else the first string."""
    for key in (image_key, geometry.get("to_name")):
        if key and isinstance(task_data.get(key), str):
            return task_data[key]
    for value in task_data.values():
        if isinstance(value, str) and value:
            return value
    raise ValueError("task data holds no image reference")


def split_for(task_id: Any, val_fraction: float) -> str:
    """Sticky split: 'val' when sha256('task:<id>') maps below val_fraction, else 'train'. Never changes between runs."""
    bucket = int(hashlib.sha256(f"task:{task_id}".encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def region_attributes(task_data: dict[str, Any], region_id: str) -> dict[str, Any] | None:
    """The region's attribute record for the DLC-style judge: ``data.attributes[<region id>]`` when the task data
    hold one (scripts.export_synthetic writes them), else None (real Label Studio tasks: the judge is skipped)."""
    attributes = task_data.get("attributes")
    if isinstance(attributes, dict) and isinstance(attributes.get(region_id), dict) and attributes[region_id]:
        return attributes[region_id]
    return None


def pixels_hash(array: np.ndarray) -> str:
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def default_fetcher(local_files_root: str | None = None) -> ImageFetcher:
    """Images through backend/media.py: Label Studio uploads/local-files with LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY,
    cloud URIs presigned by Label Studio, http(s) under MEDIA_ALLOWED_HOSTS, local paths under LOCAL_FILES_ROOT."""
    from backend.media import MediaFetcher
    from backend.settings import Settings

    overrides = {"local_files_root": str(local_files_root)} if local_files_root else {}
    fetcher = MediaFetcher(Settings.from_env(**overrides))

    def fetch(url: str, task_id: Any = None) -> np.ndarray:
        return fetcher.load_image(url, task_id if isinstance(task_id, int) else None)

    return fetch


# ----------------------------------------------------------------------------------------------- build
def snapshot_objects(work_root: Path, snapshot_id: str, include_deleted: bool = True) -> Iterator[tuple[str, Path]]:
    """(key, local file) for every object in the snapshot's cumulative manifest."""
    manifest = read_json(Path(work_root) / "snapshots" / snapshot_id / "manifest.json")
    for key, entry in sorted(manifest["objects"].items()):
        if entry.get("deleted_at") and not include_deleted:
            continue
        yield key, Path(work_root) / entry["file"]


def build_dataset(
    work_root: Path,
    snapshot_id: str | None = None,
    out_dir: Path | None = None,
    val_fraction: float = 0.2,
    image_key: str | None = None,
    include_deleted: bool = True,
    fetch_image: ImageFetcher | None = None,
    force: bool = False,
    local_files_root: str | None = None,
) -> Path:
    """Build the dataset of ``snapshot_id`` (default: the latest) and return its folder. Reuses an existing build."""
    work_root = Path(work_root)
    if snapshot_id is None:
        manifest_path = work_root / "manifest.json"
        if not manifest_path.exists():
            raise BadArguments(f"no snapshot in {work_root}: run scripts.pull first")
        snapshot_id = read_json(manifest_path)["snapshot_id"]
    if not (work_root / "snapshots" / snapshot_id / "manifest.json").exists():
        raise BadArguments(f"snapshot {snapshot_id} not found in {work_root / 'snapshots'}")
    out_dir = Path(out_dir) if out_dir else work_root / "datasets" / snapshot_id
    if (out_dir / "dataset.json").exists() and not force:
        log.info("dataset %s already built", out_dir)
        return out_dir
    fetch_image = fetch_image or default_fetcher(local_files_root)

    from PIL import Image

    staging = out_dir.parent / f".staging-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "masks").mkdir(parents=True)
    skipped: list[dict[str, str]] = []
    counts = {"annotations": 0, "cancelled": 0, "regions": 0, "empty_caption": 0, "duplicates": 0}
    best: dict[tuple[str, str], dict[str, Any]] = {}  # (image hash, mask hash) -> sample (latest wins)
    unlabeled: dict[tuple[str, str], dict[str, Any]] = {}
    image_index: dict[str, tuple[str, int, int]] = {}  # url -> (pixel hash, height, width); files go to disk at once

    for key, path in snapshot_objects(work_root, snapshot_id, include_deleted):
        try:
            records = list(iter_annotations(json.loads(path.read_text(encoding="utf-8")), key))
        except (OSError, ValueError) as exc:
            skipped.append({"key": key, "reason": f"unreadable export: {exc}"})
            continue
        for record in records:
            counts["annotations"] += 1
            if record.annotation.get("was_cancelled"):
                counts["cancelled"] += 1
                continue
            for region_id, region in group_regions(record.annotation.get("result") or []).items():
                counts["regions"] += 1
                geometry = region["geometry"]
                where = f"{key} region {region_id}"
                try:
                    url = image_url(record.task_data, geometry, image_key)
                    if url not in image_index:
                        pixels = np.ascontiguousarray(fetch_image(url, record.task_id))
                        if pixels.ndim != 3 or pixels.shape[2] != 3:
                            raise ValueError(f"image {url} has shape {pixels.shape}, expected HxWx3")
                        digest = pixels_hash(pixels)
                        image_file = staging / f"images/{digest[:16]}.png"
                        if not image_file.exists():
                            Image.fromarray(pixels).save(image_file)
                        image_index[url] = (digest, pixels.shape[0], pixels.shape[1])
                    image_hash, height, width = image_index[url]
                    mask_h = int(geometry.get("original_height") or height)
                    mask_w = int(geometry.get("original_width") or width)
                    mask = rasterize(geometry, mask_h, mask_w)
                    if mask.shape != (height, width):  # export sized differently from the fetched file
                        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
                    if not mask.any():
                        raise ValueError("empty mask")
                except Exception as exc:  # one bad region must not sink the dataset
                    skipped.append({"key": where, "reason": f"{type(exc).__name__}: {exc}"})
                    continue
                mask_hash = pixels_hash(mask > 0)
                sample_id = f"{image_hash[:12]}-{mask_hash[:12]}"
                row = {
                    "id": sample_id,
                    "image": f"images/{image_hash[:16]}.png",
                    "mask": f"masks/{sample_id}.png",
                    "category": region["labels"][0] if region["labels"] else None,
                    "labels": region["labels"],
                    "task_id": record.task_id,
                    "annotation_id": record.annotation.get("id"),
                    "region_id": region_id,
                    "updated_at": record.updated_at,
                    "split": split_for(record.task_id, val_fraction),
                    "width": width,
                    "height": height,
                    "key": key,
                }
                attributes = region_attributes(record.task_data, region_id)
                if attributes is not None:
                    row["attributes"] = attributes
                Image.fromarray(mask).save(staging / row["mask"])  # same pixels for every duplicate
                if not region["caption"]:
                    counts["empty_caption"] += 1
                    unlabeled[(image_hash, mask_hash)] = row
                    continue
                row.update(caption=region["caption"], source="human")
                order = (row["updated_at"], str(row["annotation_id"]))
                previous = best.get((image_hash, mask_hash))
                if previous is not None:
                    counts["duplicates"] += 1
                    if (previous["updated_at"], str(previous["annotation_id"])) > order:
                        continue
                best[(image_hash, mask_hash)] = row

    # A region captioned anywhere is not "unlabeled".
    unlabeled = {k: v for k, v in unlabeled.items() if k not in best}
    samples = sorted(best.values(), key=lambda r: r["id"])
    unlabeled_rows = sorted(unlabeled.values(), key=lambda r: r["id"])
    used = {r["image"] for r in samples + unlabeled_rows} | {r["mask"] for r in samples + unlabeled_rows}
    for folder in ("images", "masks"):
        for file in (staging / folder).iterdir():
            if f"{folder}/{file.name}" not in used:
                file.unlink()
    used_images = {r["image"] for r in samples + unlabeled_rows}
    write_jsonl(staging / "samples.jsonl", samples)
    write_jsonl(staging / "unlabeled.jsonl", unlabeled_rows)
    summary = {
        "snapshot_id": snapshot_id,
        "built_at": utc_iso(),
        "val_fraction": val_fraction,
        "split_rule": "val iff int(sha256('task:<task id>')[:8], 16) / 2**32 < val_fraction",
        "counts": {
            **counts,
            "samples": len(samples),
            "train": sum(r["split"] == "train" for r in samples),
            "val": sum(r["split"] == "val" for r in samples),
            "unlabeled": len(unlabeled_rows),
            "images": len(used_images),
            "skipped": len(skipped),
        },
        "skipped": skipped,
    }
    atomic_write_json(staging / "dataset.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # only reached with force=True
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out_dir)
    log.info("dataset %s: %s", out_dir, summary["counts"])
    return out_dir


# ----------------------------------------------------------------------------------------------- loading
def load_samples(dataset_dir: Path, split: str | None = None, include_pseudo: bool = True) -> list[dict[str, Any]]:
    """Rows of samples.jsonl (+ pseudo.jsonl for the train split) with absolute ``image_path`` / ``mask_path``."""
    from scripts.loop_common import read_jsonl

    dataset_dir = Path(dataset_dir)
    rows = read_jsonl(dataset_dir / "samples.jsonl")
    if include_pseudo and split in (None, "train"):
        rows += read_jsonl(dataset_dir / "pseudo.jsonl")
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    for row in rows:
        row["image_path"] = str(dataset_dir / row["image"])
        row["mask_path"] = str(dataset_dir / row["mask"])
    return rows


def read_image(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8) > 127


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_work_root_arg(parser)
    parser.add_argument("--snapshot", help="snapshot id (default: the latest pulled)")
    parser.add_argument("--out", type=Path, help="output folder (default <work root>/datasets/<snapshot id>)")
    parser.add_argument(
        "--val-fraction", type=fraction, default=env_float("VAL_FRACTION", 0.2),
        help="share of tasks in the frozen validation split (env VAL_FRACTION; changing it moves tasks)",
    )
    parser.add_argument("--image-key", default=env_default("IMAGE_KEY"), help="task data key of the image (env IMAGE_KEY)")
    parser.add_argument(
        "--local-files-root", default=env_default("LOCAL_FILES_ROOT"),
        help="folder that local image paths in tasks may point into (env LOCAL_FILES_ROOT)",
    )
    parser.add_argument("--exclude-deleted", action="store_true", help="drop annotations deleted from the bucket since pulled")
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset folder exists")
    add_log_level_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        out = build_dataset(
            args.work_root, args.snapshot, args.out, args.val_fraction, args.image_key,
            include_deleted=not args.exclude_deleted, force=args.force,
            local_files_root=args.local_files_root,
        )
    except LoopError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("build failed")
        return EXIT_FAILURE
    summary = read_json(out / "dataset.json")
    print(json.dumps({"dataset": str(out), **summary["counts"]}, indent=2))
    return EXIT_PROMOTED if summary["counts"]["samples"] else EXIT_NO_SAMPLES


if __name__ == "__main__":
    sys.exit(main())
