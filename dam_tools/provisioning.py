"""The demo's data and wiring: synthetic tasks with brush regions, the backend's environment for a local CPU run, the
S3 target the annotations go to, and a Label Studio project provisioned with all of it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from dam_model.fileio import atomic_write_bytes
from dam_model.synthetic import DEFAULT_SIZES, generate_scene
from dam_tools.export_synthetic import png_bytes
from dam_tools.local_stack import ROOT
from dam_tools.ls_api import LabelStudioAPI
from ls_io.label_config import parse_label_config
from ls_io.results import brush_value, new_region_id, region_item
from ls_io.s3 import make_s3_client


# The demo's tasks come from the distribution its models were trained on (dam_model.synthetic's default sizes,
# 360-576 px on the shorter side); the landscape ones fit Label Studio's editor without scrolling. Seed 7 is
# neither the training seed (1000) nor the held-out one (9000). 20 tasks hold 80 regions, which tests/demo holds the
# served model to (>= 90 % with colour, shape and size right). The former 6 tasks held 26 regions, one region 4 points:
# a model right on 93 % of 518 held-out regions of these image sizes scored 77 % on them (the demo's pixels and masks
# are exactly the generator's; measured 2026-12-07). At 80 regions the binomial spread is about 3 points.
DEMO_SIZES: tuple[tuple[int, int], ...] = tuple(s for s in DEFAULT_SIZES if s[0] > s[1])
DEMO_SEED = 7
DEMO_TASKS = 20

# The first screen of the demo project (Label Studio shows the description in the project list and the
# instructions before the first task, and behind the editor's "i" button).
DEMO_DESCRIPTION = ("Describe Anything (DAM) captions every brush region; try a click with the keypoint tool, "
                    "correct a caption, submit, then Start Training.")
DEMO_INSTRUCTIONS = """<h3>What to try</h3>
<ol>
<li><b>Look:</b> every shape already has a brush mask and a caption from the DAM backend (the prediction's
model version says which model wrote it).</li>
<li><b>Click:</b> turn on <i>Auto-Annotation</i> at the top of the editor, pick the <i>KeyPoint</i> tool
(label <i>object</i>) and click a shape: the backend segments it and captions it.</li>
<li><b>Draw:</b> paint a brush region (label <i>object</i>) over a shape and write its caption in the text box.</li>
<li><b>Correct and submit:</b> edit any caption that is wrong, then <i>Submit</i>; annotations go to the S3
bucket the training loop reads.</li>
<li><b>Train:</b> Settings &rarr; Model &rarr; &#8942; &rarr; <i>Start Training</i> runs the loop on your
annotations; a better model is promoted and the backend swaps it in (the model version changes).</li>
</ol>
<p>The model is a tiny DAM trained here on synthetic shapes: it names colour, size and shape of these scenes,
and nothing else.</p>"""


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
    """One synthetic image written to disk and its regions as Label Studio brush results (no captions), with the
    generator's attributes of each region (what the judge checks captions against)."""

    image_path: Path
    regions: list[dict]
    reference_captions: list[str]
    attributes: list[dict] = field(default_factory=list)


def synthetic_tasks(label_config: str, out_dir: Path, n_tasks: int, seed: int = DEMO_SEED,
                    size: tuple[int, int] | None = None,
                    sizes: Sequence[tuple[int, int]] = DEMO_SIZES) -> list[SyntheticTask]:
    """``n_tasks`` seeded synthetic scenes as PNG files under ``out_dir`` plus one brush region per visible object.

    Control names come from ``label_config`` (parsed by ls_io.label_config). Region ids are full uuid4s;
    masks are RLE with foreground 255 (ls_io.results.brush_value). ``size`` is (width, height) in pixels; without
    it each scene draws one of ``sizes`` (default: the demo's, from the models' training distribution).
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
        scene = generate_scene(seed, index, size=size, sizes=None if size else sizes)
        path = out_dir / f"{scene.scene_id}.png"
        if not path.is_file():
            atomic_write_bytes(path, png_bytes(scene.image))
        regions, captions, attributes = [], [], []
        for obj in scene.objects:
            if not obj.mask.any():
                continue
            shape = str(obj.attributes.get("shape", ""))
            label = shape if shape in cfg.brush.labels else (cfg.brush.labels[0] if cfg.brush.labels else "object")
            regions.append(region_item(new_region_id(), cfg.brush.name, cfg.brush.to_name, "brushlabels",
                                       brush_value(obj.mask, [label]), size=(scene.width, scene.height)))
            captions.append(obj.long_caption)
            attributes.append(obj.attributes)
        tasks.append(SyntheticTask(image_path=path, regions=regions, reference_captions=captions,
                                   attributes=attributes))
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
        # One torch thread: the tiny model's operators are too small to split, and on 2 cores the second one serves
        # the request threads (python scripts/bench.py concurrent: 8 annotators got 84 regions/s with 1 thread, 32-44
        # with 2; measured 2026-12-07).
        "TORCH_NUM_THREADS": env.get("TORCH_NUM_THREADS", "1"),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
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


def project_guide(description: str = DEMO_DESCRIPTION, instructions: str = DEMO_INSTRUCTIONS) -> dict[str, object]:
    """Project fields that put "what to try" on the first screen (shown before the first task)."""
    return {"description": description, "expert_instruction": instructions, "show_instruction": True}


def provision_project(api: LabelStudioAPI, title: str, label_config: str, tasks: Sequence[SyntheticTask],
                      backend_url: str, s3: S3Target | None = None, region_model_version: str = "synthetic-masks",
                      extra_task_files: Sequence[Path] = (), guide: Mapping[str, object] | None = None
                      ) -> ProvisionedProject:
    """Create a project, upload the task images, attach their regions, connect the backend (interactive) and,
    when ``s3`` is given, add an S3 target storage.

    Regions are stored as a prediction with model_version ``region_model_version`` (a pre-annotation, as SAM 2
    automatic masks would be): Retrieve predictions then asks the backend to caption them, and the stored
    predictions of the backend carry the backend's own model_version. ``extra_task_files`` become tasks without
    any region (for NO_REGION_MODE). ``guide``: extra project fields (``project_guide()``: the demo's instructions).
    """
    project = api.create_project(title, label_config, **dict(guide or {}))
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
