"""Step 2 of the loop (dam-build): turn a pulled snapshot of Label Studio exports into a dataset folder
(dam_loop.dataset describes the folder and its rows).

For every non-cancelled annotation (both export formats), each region is the geometry result (brush RLE, polygon or
rectangle, in percent of the image; or a video rectangle track) plus the per-region TextArea result with the SAME id
(the caption) and its labels (the category). Image regions with a caption go to samples.jsonl, without one to
unlabeled.jsonl (inputs of the pseudo_label step); captioned video tracks to video_samples.jsonl.

Attributes: when the task data hold ``data.attributes = {<region id>: {color, shape, size, position, context,
context_relation, ...}}`` (dam_tools.export_synthetic writes it), the region's record is copied into its sample as
``attributes`` and the evaluate step runs the exact DLC-style judge on it. Real Label Studio tasks have none: the
samples then carry no ``attributes`` and evaluation uses the reference metrics only.

Video tracks (Label Studio ``videorectangle``: keyframes in ``value.sequence``, frames 1-based): the box of every
frame is Label Studio's own, read by ls_io.tracks as the backend reads it (the editor's rule: a keyframe shows its
own box on its frame; from an enabled keyframe the box is interpolated linearly to the next one, rotation the short
way round, or held to the end of the timeline after the last one; after a disabled keyframe, or one without
``enabled``, nothing until the next keyframe; nothing before the first); ``video_frames`` (default 8, env
VIDEO_FRAMES) frames are picked among the frames where the box is visible with
``dam_model.segmentation.sample_frames``, the rule the backend uses before DAM's ``describe_video``; each picked
frame is written with the box rasterised as its mask. LS frame f is the f-th decoded frame (f - 1 here). A row:
kind="video", id, video (the task's URL), frames and masks (one path per picked frame, repeated when fewer frames
are visible than picked), frame_indices (0-based), boxes (the interpolated {x, y, width, height, rotation} in
percent, per picked frame), num_frames, width, height, caption, category, labels, split, task_id, annotation_id,
region_id, updated_at, source="human", key, video_sha256 (of the file), attributes (when present). Tracks without
a caption are counted (``video_empty_caption``), not written.

Keypoints are prompts, not areas: keypoint items are left out of the regions (a region's mask is its brush,
polygon or rectangle item).

Rules: cancelled annotations and empty captions are skipped; duplicates (same image pixels + same mask pixels, or same
video file + same per-frame boxes) keep the latest annotation (updated_at, then id); the split is sticky:
sha256("task:<task id>") decides, so a task never changes side between runs (for a fixed --val-fraction). Images and
videos are fetched with the backend's media rules (ls_io.media, configured by build_video.media_config).

Usage::

    python -m dam_loop.steps.build --work-root loop_work [--snapshot ID] [--val-fraction 0.2] [--video-frames 8]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from dam_loop.cli import (
    EXIT_NO_SAMPLES,
    EXIT_OK,
    BadArguments,
    add_log_level_arg,
    add_work_root_arg,
    env_default,
    env_float,
    env_int,
    fraction,
    run_main,
    step_parser,
)
from dam_loop.dataset import SPLIT_RULE, VIDEO_SAMPLES_FILE, DatasetWriter, is_built, pixels_hash, read_info, split_for
from dam_loop.provenance import utc_iso
from dam_loop.steps.build_video import DEFAULT_VIDEO_FRAMES, VideoFetcher, VideoSampleWriter, media_config
from dam_model.data import KIND_IMAGE
from dam_model.fileio import read_json
from ls_io.exports import AnnotationRecord, iter_annotations
from ls_io.media import MediaFetcher
from ls_io.regions import GEOMETRY_TYPES, KEYPOINT_TYPES, TRACK_TYPES, group_regions, rasterize, region_type

log = logging.getLogger("dam_loop.build")

ImageFetcher = Callable[[str, Any], np.ndarray]  # (url or path, task id) -> HxWx3 uint8 RGB


def default_fetcher(local_files_root: str | None = None) -> ImageFetcher:
    """Images with the backend's media rules (build_video.media_config)."""
    fetcher = MediaFetcher(media_config(local_files_root))

    def fetch(url: str, task_id: Any = None) -> np.ndarray:
        return fetcher.load_image(url, task_id if isinstance(task_id, int) else None)

    return fetch


def image_url(task_data: dict[str, Any], geometry: dict[str, Any], image_key: str | None) -> str:
    """The task's media reference: --image-key, else the data key named like the region's to_name, else the first string."""
    for key in (image_key, geometry.get("to_name")):
        if key and isinstance(task_data.get(key), str):
            return task_data[key]
    for value in task_data.values():
        if isinstance(value, str) and value:
            return value
    raise ValueError("task data holds no image reference")


def region_fields(record: AnnotationRecord, region: dict[str, Any], region_id: Any) -> dict[str, Any]:
    """Where a sample comes from (same fields for image and video rows): category, labels, task/annotation/region
    ids, the annotation's updated_at and the export object's key."""
    return {
        "category": region["labels"][0] if region["labels"] else None,
        "labels": region["labels"],
        "task_id": record.task_id,
        "annotation_id": record.annotation.get("id"),
        "region_id": region_id,
        "updated_at": record.updated_at,
        "key": record.key,
    }


def region_attributes(task_data: dict[str, Any], region_id: str) -> dict[str, Any] | None:
    """The region's attribute record for the DLC-style judge: ``data.attributes[<region id>]`` when the task data
    hold one (dam_tools.export_synthetic writes them), else None (real Label Studio tasks: the judge is skipped)."""
    attributes = task_data.get("attributes")
    if isinstance(attributes, dict) and isinstance(attributes.get(region_id), dict) and attributes[region_id]:
        return attributes[region_id]
    return None


def snapshot_objects(work_root: Path, snapshot_id: str, include_deleted: bool = True) -> Iterator[tuple[str, Path, str]]:
    """(key, local file, id of the snapshot that downloaded it) for every object in the snapshot's cumulative
    manifest. The last tells tonight's data (this snapshot) from earlier nights' (training replays those)."""
    manifest = read_json(Path(work_root) / "snapshots" / snapshot_id / "manifest.json")
    for key, entry in sorted(manifest["objects"].items()):
        if entry.get("deleted_at") and not include_deleted:
            continue
        yield key, Path(work_root) / entry["file"], entry.get("snapshot")


def uncaptionable_regions(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(region id, its item types) of regions that carry a caption but no geometry the loop can turn into a mask
    (an ellipse, a tag this project does not read): reported, because dropping them silently loses a correction."""
    captioned = {str(i.get("id", "")) for i in items if region_type(i) == "textarea"}
    with_geometry = {str(i.get("id", "")) for i in items if region_type(i) in GEOMETRY_TYPES}
    out = []
    for region_id in sorted(captioned - with_geometry):
        kinds = sorted({region_type(i) for i in items if str(i.get("id", "")) == region_id} - {"textarea"})
        if kinds:  # a caption alone (a per-task text, no region) is not a region at all
            out.append((region_id, ",".join(kinds)))
    return out


def _latest_wins(best: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any]) -> bool:
    """Keep ``row`` under ``key`` unless a later annotation (updated_at, then id) is there; True when it was a duplicate."""
    previous = best.get(key)
    if previous is None or (previous["updated_at"], str(previous["annotation_id"])) <= (row["updated_at"], str(row["annotation_id"])):
        best[key] = row
    return previous is not None


class _Build:
    """One dataset build: regions in, rows and counts out (pixel files go to the writer as they come)."""

    def __init__(self, writer: DatasetWriter, videos: VideoSampleWriter, fetch_image: ImageFetcher,
                 val_fraction: float, image_key: str | None) -> None:
        self.writer, self.videos, self.fetch_image = writer, videos, fetch_image
        self.val_fraction, self.image_key = val_fraction, image_key
        self.skipped: list[dict[str, str]] = []
        self.counts = {"annotations": 0, "cancelled": 0, "regions": 0, "empty_caption": 0, "duplicates": 0,
                       "video_regions": 0, "video_empty_caption": 0, "video_duplicates": 0}
        self.best: dict[tuple[str, str], dict[str, Any]] = {}  # (image hash, mask hash) -> sample (latest wins)
        self.best_video: dict[str, dict[str, Any]] = {}  # video hash + track hash -> video sample (latest wins)
        self.unlabeled: dict[tuple[str, str], dict[str, Any]] = {}
        self.image_index: dict[str, tuple[str, int, int]] = {}  # url -> (pixel hash, height, width)
        self.object_snapshot: str | None = None  # the snapshot that downloaded the object being added

    def add_object(self, key: str, path: Path, object_snapshot: str | None = None) -> None:
        self.object_snapshot = object_snapshot
        try:
            records = list(iter_annotations(json.loads(path.read_text(encoding="utf-8")), key))
        except (OSError, ValueError) as exc:
            self.skipped.append({"key": key, "reason": f"unreadable export: {exc}"})
            return
        for record in records:
            self.counts["annotations"] += 1
            if record.annotation.get("was_cancelled"):
                self.counts["cancelled"] += 1
                continue
            result = record.annotation.get("result") or []
            if not isinstance(result, list):
                self.skipped.append({"key": key, "reason": f"result is a {type(result).__name__}, not a list"})
                continue
            items = [item for item in result if isinstance(item, dict)]
            for region_id, kind in uncaptionable_regions(items):
                self.skipped.append({"key": f"{key} region {region_id}",
                                     "reason": f"captioned region has no supported geometry (type {kind!r})"})
            areas = [item for item in items if region_type(item) not in KEYPOINT_TYPES]
            for region_id, region in group_regions(areas).items():
                try:
                    if region_type(region["geometry"]) in TRACK_TYPES:
                        self.add_video_region(record, region_id, region)
                    else:
                        self.add_image_region(record, region_id, region)
                except Exception as exc:  # one bad region must not sink the dataset
                    self.skipped.append({"key": f"{key} region {region_id}", "reason": f"{type(exc).__name__}: {exc}"})

    def _add_attributes(self, row: dict[str, Any], record: AnnotationRecord, region_id: str) -> None:
        attributes = region_attributes(record.task_data, region_id)
        if attributes is not None:
            row["attributes"] = attributes

    def add_video_region(self, record: AnnotationRecord, region_id: str, region: dict[str, Any]) -> None:
        self.counts["video_regions"] += 1
        if not region["caption"]:
            self.counts["video_empty_caption"] += 1
            return
        url = image_url(record.task_data, region["geometry"], self.image_key)
        row, track_key = self.videos.sample(url, record.task_id, region["geometry"])
        row.update(region_fields(record, region, region_id), caption=region["caption"], source="human",
                   split=split_for(record.task_id, self.val_fraction), object_snapshot=self.object_snapshot)
        self._add_attributes(row, record, region_id)
        self.counts["video_duplicates"] += _latest_wins(self.best_video, track_key, row)

    def add_image_region(self, record: AnnotationRecord, region_id: str, region: dict[str, Any]) -> None:
        self.counts["regions"] += 1
        geometry = region["geometry"]
        url = image_url(record.task_data, geometry, self.image_key)
        if url not in self.image_index:
            pixels = np.ascontiguousarray(self.fetch_image(url, record.task_id))
            if pixels.ndim != 3 or pixels.shape[2] != 3:
                raise ValueError(f"image {url} has shape {pixels.shape}, expected HxWx3")
            digest = pixels_hash(pixels)
            if not self.writer.has(f"images/{digest[:16]}.png"):
                self.writer.write_image(f"images/{digest[:16]}.png", pixels)
            self.image_index[url] = (digest, pixels.shape[0], pixels.shape[1])
        image_hash, height, width = self.image_index[url]
        mask = rasterize(geometry, int(geometry.get("original_height") or height), int(geometry.get("original_width") or width))
        if mask.shape != (height, width):  # export sized differently from the fetched file
            mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
        if not mask.any():
            raise ValueError("empty mask")
        mask_hash = pixels_hash(mask > 0)
        sample_id = f"{image_hash[:12]}-{mask_hash[:12]}"
        row = {
            "kind": KIND_IMAGE,
            "id": sample_id,
            "image": f"images/{image_hash[:16]}.png",
            "mask": f"masks/{sample_id}.png",
            **region_fields(record, region, region_id),
            "split": split_for(record.task_id, self.val_fraction),
            "object_snapshot": self.object_snapshot,
            "width": width,
            "height": height,
        }
        self._add_attributes(row, record, region_id)
        self.writer.write_mask(row["mask"], mask)  # same pixels for every duplicate
        if not region["caption"]:
            self.counts["empty_caption"] += 1
            self.unlabeled[(image_hash, mask_hash)] = row
            return
        row.update(caption=region["caption"], source="human")
        self.counts["duplicates"] += _latest_wins(self.best, (image_hash, mask_hash), row)

    def commit(self, snapshot_id: str) -> Path:
        # A region captioned anywhere is not "unlabeled".
        unlabeled = {k: v for k, v in self.unlabeled.items() if k not in self.best}
        samples = sorted(self.best.values(), key=lambda r: r["id"])
        unlabeled_rows = sorted(unlabeled.values(), key=lambda r: r["id"])
        video_rows = sorted(self.best_video.values(), key=lambda r: r["id"])
        summary = {
            "snapshot_id": snapshot_id,
            "built_at": utc_iso(),
            "val_fraction": self.val_fraction,
            "split_rule": SPLIT_RULE,
            "video": {
                "samples_file": VIDEO_SAMPLES_FILE,
                "frames_per_sample": self.videos.n_frames,
                "frame_rule": "dam_model.segmentation.sample_frames over the frames where Label Studio shows the box",
            },
            "counts": {
                **self.counts,
                "samples": len(samples),
                "train": sum(r["split"] == "train" for r in samples),
                "val": sum(r["split"] == "val" for r in samples),
                "unlabeled": len(unlabeled_rows),
                "images": len({r["image"] for r in samples + unlabeled_rows}),
                "video_samples": len(video_rows),
                "video_train": sum(r["split"] == "train" for r in video_rows),
                "video_val": sum(r["split"] == "val" for r in video_rows),
                "videos": len({r["video_sha256"] for r in video_rows}),
                "video_frames": len({p for r in video_rows for p in r["frames"]}),
                "skipped": len(self.skipped),
            },
            "skipped": self.skipped,
        }
        out_dir = self.writer.commit(samples, unlabeled_rows, video_rows, summary)
        log.info("dataset %s: %s", out_dir, summary["counts"])
        return out_dir


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
    fetch_video: VideoFetcher | None = None,
    video_frames: int = DEFAULT_VIDEO_FRAMES,
) -> Path:
    """Build the dataset of ``snapshot_id`` (default: the latest) and return its folder. Reuses an existing build.

    fetch_video: how video files are fetched (default: build_video.default_video_fetcher);
    video_frames: frames sampled per video track (DAM's video input: 8).
    """
    work_root = Path(work_root)
    if snapshot_id is None:
        manifest_path = work_root / "manifest.json"
        if not manifest_path.exists():
            raise BadArguments(f"no snapshot in {work_root}: run the pull step (dam-pull) first")
        snapshot_id = read_json(manifest_path)["snapshot_id"]
    if not (work_root / "snapshots" / snapshot_id / "manifest.json").exists():
        raise BadArguments(f"snapshot {snapshot_id} not found in {work_root / 'snapshots'}")
    out_dir = Path(out_dir) if out_dir else work_root / "datasets" / snapshot_id
    if is_built(out_dir) and not force:
        log.info("dataset %s already built", out_dir)
        return out_dir
    fetch_image = fetch_image or default_fetcher(local_files_root)
    scratch = out_dir.parent / f".scratch-{out_dir.name}-{os.getpid()}"
    writer = DatasetWriter(out_dir)
    try:
        build = _Build(writer, VideoSampleWriter(writer, scratch, fetch_video, local_files_root, video_frames),
                       fetch_image, val_fraction, image_key)
        for key, path, object_snapshot in snapshot_objects(work_root, snapshot_id, include_deleted):
            build.add_object(key, path, object_snapshot)
        return build.commit(snapshot_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        writer.discard()  # gone already after a successful build (renamed to out_dir)


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m dam_loop.steps.build", __doc__)
    add_work_root_arg(parser)
    parser.add_argument("--snapshot", help="snapshot id (default: the latest pulled)")
    parser.add_argument("--out", type=Path, help="output folder (default <work root>/datasets/<snapshot id>)")
    add_build_args(parser)
    parser.add_argument(
        "--video-frames", type=int, default=env_int("VIDEO_FRAMES", DEFAULT_VIDEO_FRAMES),
        help="frames sampled per video track (env VIDEO_FRAMES; DAM's video input is 8)",
    )
    parser.add_argument("--exclude-deleted", action="store_true", help="drop annotations deleted from the bucket since pulled")
    parser.add_argument("--force", action="store_true", help="rebuild even if the dataset folder exists")
    add_log_level_arg(parser)
    return parser


def add_build_args(parser: argparse.ArgumentParser) -> None:
    """The build options nightly has too: validation share, the image's data key, the local-files root."""
    parser.add_argument(
        "--val-fraction", type=fraction, default=env_float("VAL_FRACTION", 0.2),
        help="share of tasks in the frozen validation split (env VAL_FRACTION; changing it moves tasks)",
    )
    parser.add_argument("--image-key", default=env_default("IMAGE_KEY"), help="task data key of the image (env IMAGE_KEY)")
    parser.add_argument(
        "--local-files-root", default=env_default("LOCAL_FILES_ROOT"),
        help="folder that local image paths in tasks may point into (env LOCAL_FILES_ROOT)",
    )


def run_cli(args: argparse.Namespace) -> int:
    out = build_dataset(
        args.work_root, args.snapshot, args.out, args.val_fraction, args.image_key,
        include_deleted=not args.exclude_deleted, force=args.force,
        local_files_root=args.local_files_root, video_frames=args.video_frames,
    )
    counts = read_info(out)["counts"]
    print(json.dumps({"dataset": str(out), **counts}, indent=2))
    return EXIT_OK if counts["samples"] else EXIT_NO_SAMPLES


def main(argv: list[str] | None = None) -> int:
    return run_main(run_cli, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
