"""Captions to judge: a DAM captioning held-out synthetic scenes, or a JSON-lines file of captions made elsewhere."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from dam_model.synthetic import Scene, generate_scene

if TYPE_CHECKING:  # the model pulls in torch; callers that only judge caption files never need it
    from dam_model.modeling import DescribeAnythingModel


def caption_text(caption: Any) -> str:
    """A caption as text: a str stays as it is, a Caption gives its `.text`."""
    return caption if isinstance(caption, str) else str(getattr(caption, "text"))


def caption_scenes(model: "DescribeAnythingModel", scenes: Sequence[Scene], *, batch_size: int = 8,
                   max_new_tokens: int = 64) -> list[str]:
    """One caption per object of every scene, in scene then object order, `batch_size` scenes per describe_batch."""
    step = max(1, batch_size)
    captions: list[str] = []
    for start in range(0, len(scenes), step):
        chunk = scenes[start:start + step]
        outputs = model.describe_batch([(s.image, [o.mask for o in s.objects]) for s in chunk],
                                       max_new_tokens=max_new_tokens)
        for scene, per_scene in zip(chunk, outputs):
            if len(per_scene) != len(scene.objects):
                raise RuntimeError(f"describe_batch gave {len(per_scene)} captions for {len(scene.objects)} masks")
            captions += [caption_text(c) for c in per_scene]
    return captions


def read_caption_file(path: str, size: tuple[int, int] | None) -> tuple[list[str], list[Mapping[str, Any]], list[str]]:
    """(captions, attribute dicts, references) of a JSONL file whose lines are {caption, attributes[, reference]}
    or {caption, seed, index, object_id[, reference]} (the scene is regenerated at `size`; its long caption is the
    reference when the line has none). A missing reference is ""."""
    captions, regions, references = [], [], []
    cache: dict[tuple[int, int], Scene] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "caption" not in record:
                raise ValueError(f"{path}:{number}: no 'caption'")
            if "attributes" in record:
                attributes = record["attributes"]
                reference = record.get("reference", "")
            elif {"seed", "index", "object_id"} <= set(record):
                key = (int(record["seed"]), int(record["index"]))
                if key not in cache:
                    cache[key] = generate_scene(*key, size=size)
                obj = cache[key].objects[int(record["object_id"])]
                attributes, reference = obj.attributes, record.get("reference", obj.long_caption)
            else:
                raise ValueError(f"{path}:{number}: needs 'attributes' or 'seed', 'index' and 'object_id'")
            captions.append(str(record["caption"]))
            regions.append(attributes)
            references.append(reference)
    return captions, regions, references
