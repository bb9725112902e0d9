"""The demo's tasks come from the distribution its models were trained on, and the model the demo serves captions
them right: colour, shape and size of >= 90 % of the regions (the generator's attributes, dam_model.evaluation's
RuleJudge). The `fast` model the demo serves first does not reach that (shape is right for about a third of the
regions after its 1.5 minutes of training: its figures are in dam_tools/build_tiny_model.py), so the accuracy test
holds the model the demo ends up serving, `default` (promoted when its background build is done).

The accuracy test needs that model: with it cached it runs in about half a minute; without it, it runs only on
request (DEMO_ACCURACY_TESTS=1), because building `default` from an empty cache takes ~20-25 minutes on 2 cores
(fast model included), more than CI's whole budget."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dam_model.data import RegionSample
from dam_model.evaluation import RuleJudge, evaluate_captions
from dam_model.modeling import DescribeAnythingModel
from dam_model.synthetic import DEFAULT_SIZES
from dam_tools.build_tiny_model import appearance_right, cached_model, ensure_tiny_model, generate_captions
from dam_tools.demo_models import BEST_PROFILE
from dam_tools.provisioning import DEMO_SEED, DEMO_TASKS, synthetic_tasks
from ls_io.rle import decode_rle

ROOT = Path(__file__).resolve().parents[2]
LABEL_CONFIG = (ROOT / "label_config" / "image.xml").read_text()


def demo_regions(out_dir: Path) -> tuple[list[RegionSample], list[dict]]:
    """The demo's own tasks (same call, same defaults as dam_tools.demo) as (region samples, attributes): each mask
    decoded from the brush RLE Label Studio stores, as the backend decodes it."""
    samples, attributes = [], []
    for task in synthetic_tasks(LABEL_CONFIG, out_dir, DEMO_TASKS):
        image = np.asarray(Image.open(task.image_path).convert("RGB"))
        for item, attrs, reference in zip(task.regions, task.attributes, task.reference_captions):
            mask = decode_rle(item["value"]["rle"], item["original_height"], item["original_width"]) > 127
            samples.append(RegionSample(image, mask, caption=reference))
            attributes.append(attrs)
    return samples, attributes


def test_demo_tasks_come_from_the_training_distribution(tmp_path):
    tasks = synthetic_tasks(LABEL_CONFIG, tmp_path, DEMO_TASKS)
    assert DEMO_SEED not in (1000, 9000)  # neither the training seed nor the held-out one
    for task in tasks:
        width, height = Image.open(task.image_path).size
        assert (width, height) in DEFAULT_SIZES and width > height  # landscape: fits the editor
        assert task.regions and len(task.regions) == len(task.attributes)
        assert all(item["type"] == "brushlabels" for item in task.regions)
    # enough regions that the >= 90 % check below measures the model, not the luck of the draw (one region of 26
    # was 4 points; of these, about 1.25)
    assert sum(len(task.regions) for task in tasks) >= 75


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DEMO_ACCURACY_TESTS") != "1" and cached_model(BEST_PROFILE) is None,
                    reason=f"the '{BEST_PROFILE}' tiny model is not cached and building it takes ~20-25 min on 2 cores: "
                           "DEMO_ACCURACY_TESTS=1 builds it and runs this check")
def test_served_model_names_colour_shape_and_size_of_the_demo_regions(tmp_path):
    model = DescribeAnythingModel.from_pretrained(str(ensure_tiny_model(BEST_PROFILE)), device="cpu",
                                                  dtype="float32")
    samples, attributes = demo_regions(tmp_path)
    captions = generate_captions(model, samples, max_new_tokens=64)  # describe_batch: the backend's path
    report = evaluate_captions(captions, attributes, RuleJudge())
    right = appearance_right(report.regions)
    wrong = [(c, a["size"], a["color"], a["shape"]) for c, a, r in zip(captions, attributes, report.regions)
             if not all(v.outcome == "correct" for v in r.verdicts if v.question.kind == "positive"
                        and v.question.attribute in ("color", "shape", "size"))]
    assert right >= 0.9, f"{right:.2f} of {len(captions)} regions right; wrong: {wrong}"
