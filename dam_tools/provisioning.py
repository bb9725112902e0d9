"""The demo's data and wiring: synthetic tasks with brush regions, the backend's environment for a local CPU run, the
S3 target the annotations go to, and a Label Studio project provisioned with all of it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from dam_model.fileio import atomic_write_bytes
from dam_model.synthetic import generate_scene
from dam_tools.export_synthetic import png_bytes
from dam_tools.local_stack import ROOT
from dam_tools.ls_api import LabelStudioAPI
from ls_io.label_config import parse_label_config
from ls_io.results import brush_value, new_region_id, region_item
from ls_io.s3 import make_s3_client


def create_bucket(endpoint: str, bucket: str, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
    """Create ``bucket`` on an S3-compatible endpoint unless it exists."""
    s3 = make_s3_client(endpoint, region=region, access_key=access_key, secret_key=secret_key)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


@dataclass(frozen=True)
class S3Target:
    """Where Label Studio's target storage exports annotations (moto locally, MinIO in compose)."""

    endpoint: str
    bucket: str = "annotations"
    prefix: str = "annotations"
    access_key: str = "demo-access-key"
    secret_key: str = "demo-secret-key"
    region: str = "us-east-1"

    def loop_env(self) -> dict[str, str]:
        """The variables the loop's pull and nightly steps read to reach this bucket."""
        return {
            "S3_ENDPOINT_URL": self.endpoint, "S3_BUCKET": self.bucket, "S3_PREFIX": self.prefix,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


@dataclass
class SyntheticTask:
    """One synthetic image written to disk and its regions as Label Studio brush results (no captions)."""

    image_path: Path
    regions: list[dict]
    reference_captions: list[str]


def synthetic_tasks(label_config: str, out_dir: Path, n_tasks: int, seed: int = 7,
                    size: tuple[int, int] = (96, 72)) -> list[SyntheticTask]:
    """``n_tasks`` seeded synthetic scenes as PNG files under ``out_dir`` plus one brush region per visible object.

    Control names come from ``label_config`` (parsed by ls_io.label_config). Region ids are full uuid4s;
    masks are RLE with foreground 255 (ls_io.results.brush_value). ``size`` is (width, height) in pixels.
    """
    if n_tasks < 1:
        raise ValueError("n_tasks must be >= 1")
    cfg = parse_label_config(label_config)
    if cfg.brush is None:
        raise ValueError("the label config has no BrushLabels control: nothing to hold the regions")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks: list[SyntheticTask] = []
    for index in range(n_tasks):
        scene = generate_scene(seed, index, size=size)
        path = out_dir / f"{scene.scene_id}.png"
        if not path.is_file():
            atomic_write_bytes(path, png_bytes(scene.image))
        regions, captions = [], []
        for obj in scene.objects:
            if not obj.mask.any():
                continue
            shape = str(obj.attributes.get("shape", ""))
            label = shape if shape in cfg.brush.labels else (cfg.brush.labels[0] if cfg.brush.labels else "object")
            regions.append(region_item(new_region_id(), cfg.brush.name, cfg.brush.to_name, "brushlabels",
                                       brush_value(obj.mask, [label]), size=(scene.width, scene.height)))
            captions.append(obj.long_caption)
        tasks.append(SyntheticTask(image_path=path, regions=regions, reference_captions=captions))
    return tasks


def backend_env(model_dir: Path, ls_url: str, ls_token: str, run_dir: Path, *, segmenter: str = "region",
                s3: S3Target | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The backend's environment for a local run on CPU: the given DAM folder, offline segmenter, files under run_dir."""
    run_dir = Path(run_dir).resolve()
    env = dict(os.environ)
    env.update({
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": ls_token,
        "DAM_MODEL": str(Path(model_dir).resolve()),
        "MODELS_ROOT": str(run_dir / "models"),
        "MODEL_POLL_SECONDS": "5",
        "DEVICE": "cpu",
        "DTYPE": "float32",
        "SEGMENTER": segmenter,
        "MEDIA_CACHE_DIR": str(run_dir / "cache" / "media"),
        "EVENTS_FILE": str(run_dir / "events" / "webhook_events.jsonl"),
        "TRAIN_LOG_DIR": str(run_dir / "logs" / "training"),
        "LOOP_WORK_ROOT": str(run_dir / "loop"),
        "INIT_MODEL": str(Path(model_dir).resolve()),
        "TORCH_NUM_THREADS": env.get("TORCH_NUM_THREADS", "2"),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        "LOG_LEVEL": env.get("LOG_LEVEL", "INFO"),
        "PYTHONPATH": str(ROOT),
    })
    if s3 is not None:
        env.update(s3.loop_env())
    env.update(extra or {})
    return env


@dataclass
class ProvisionedProject:
    """What ``provision_project`` created in Label Studio."""

    project_id: int
    ml_backend_id: int
    task_ids: list[int]
    storage_id: int | None = None


def provision_project(api: LabelStudioAPI, title: str, label_config: str, tasks: Sequence[SyntheticTask],
                      backend_url: str, s3: S3Target | None = None, region_model_version: str = "synthetic-masks",
                      extra_task_files: Sequence[Path] = ()) -> ProvisionedProject:
    """Create a project, upload the task images, attach their regions, connect the backend (interactive) and,
    when ``s3`` is given, add an S3 target storage.

    Regions are stored as a prediction with model_version ``region_model_version`` (a pre-annotation, as SAM 2
    automatic masks would be): Retrieve predictions then asks the backend to caption them, and the stored
    predictions of the backend carry the backend's own model_version. ``extra_task_files`` become tasks without
    any region (for NO_REGION_MODE).
    """
    project = api.create_project(title, label_config)
    task_ids = api.upload_files(project, [t.image_path for t in tasks] + list(extra_task_files))
    for task_id, task in zip(task_ids, tasks):
        if task.regions:
            api.create_prediction(task_id, task.regions, model_version=region_model_version, score=1.0)
    storage = None
    if s3 is not None:
        storage = api.add_s3_target_storage(project, s3.bucket, s3.prefix, s3.endpoint, s3.access_key,
                                            s3.secret_key, s3.region)
    ml_id = api.connect_ml_backend(project, backend_url, title="DAM captions", interactive=True)
    return ProvisionedProject(project_id=project, ml_backend_id=ml_id, task_ids=task_ids, storage_id=storage)
