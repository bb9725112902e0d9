"""Label Studio export of synthetic scenes: both S3 formats parse, masks round-trip through the SDK's decoder."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from dam_model.fileio import atomic_write_bytes
from dam_tools import export_synthetic as ex
from dam_tools import export_video as exv
from ls_io.rle import encode_rle
from ls_io.video_io import video_bytes


def _decode(rle, height, width):
    """The SDK decoder gives the RGBA stream; the alpha channel is the mask."""
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3]


def _check_result(scene, result, captions):
    assert len(result) == 2 * len(scene.objects)
    for k, obj in enumerate(scene.objects):
        brush, text = result[2 * k], result[2 * k + 1]
        assert brush["type"] == "brushlabels" and text["type"] == "textarea"  # brush first: the editor needs it
        assert brush["id"] == text["id"] and uuid.UUID(brush["id"]).version == 4 and len(brush["id"]) == 36
        assert brush["original_width"] == scene.width and brush["original_height"] == scene.height
        decoded = _decode(brush["value"]["rle"], scene.height, scene.width)
        assert set(np.unique(decoded)) <= {0, 255}  # foreground 255, not 1
        np.testing.assert_array_equal(decoded == 255, obj.mask)
        assert text["value"]["text"] == [captions[k]]
    assert len({item["id"] for item in result}) == len(scene.objects)


def test_annotation_format_round_trips(small_scenes):
    objects = ex.export_objects(small_scenes[:4], "annotation", prefix="ls-export")
    assert sorted(objects) == sorted(f"ls-export/{i}" for i in range(1, 5))
    for scene, key in zip(small_scenes[:4], [f"ls-export/{i}" for i in range(1, 5)]):
        annotation = json.loads(objects[key])
        assert {"id", "result", "completed_by", "created_at", "updated_at", "task", "parent_prediction"} <= set(annotation)
        assert annotation["task"]["data"]["image"] == f"images/{scene.scene_id}.png"
        assert annotation["task"]["meta"]["synthetic"] == {"seed": scene.seed, "index": scene.index, "scene_id": scene.scene_id}
        _check_result(scene, annotation["result"], [o.long_caption for o in scene.objects])
        _check_attributes(scene, annotation["task"]["data"], annotation["result"])


def test_task_format_round_trips_with_model_predictions(small_scenes):
    scenes = small_scenes[4:7]
    objects = ex.export_objects(scenes, "task", prefix="", with_model_captions=True, caption="short",
                                image_url_prefix="s3://bucket/img/")
    assert sorted(objects) == ["1.json", "2.json", "3.json"]
    for scene, key in zip(scenes, ["1.json", "2.json", "3.json"]):
        task = json.loads(objects[key])
        assert task["data"]["image"] == f"s3://bucket/img/{scene.scene_id}.png"
        _check_attributes(scene, task["data"], task["annotations"][0]["result"])
        (annotation,) = task["annotations"]
        assert annotation["task"] == task["id"]
        _check_result(scene, annotation["result"], [o.short_caption for o in scene.objects])
        (prediction,) = task["predictions"]
        assert annotation["parent_prediction"] == prediction["id"]
        _check_result(scene, prediction["result"], ex.model_captions(scene))


def _check_attributes(scene, data, result):
    """data.attributes: one record per region, keyed by the region's result id, equal to the generator's record."""
    from dam_model import evaluation as ev

    attributes = data["attributes"]
    assert list(attributes) == ex.region_ids(scene) == [item["id"] for item in result if item["type"] == "brushlabels"]
    for obj, record in zip(scene.objects, attributes.values()):
        assert record == obj.attributes
        assert {"color", "shape", "size", "position", "context", "context_relation"} <= set(record)
    captions = [item["value"]["text"][0] for item in result if item["type"] == "textarea"]
    if captions == [o.long_caption for o in scene.objects]:  # the exact judge runs from the exported data alone
        assert ev.evaluate_captions(captions, list(attributes.values()), ev.RuleJudge()).positive == 1.0


def test_attributes_can_be_left_out_like_a_real_label_studio_export(small_scenes):
    for fmt in ex.FORMATS:
        for body in ex.export_objects(small_scenes[:2], fmt, with_attributes=False).values():
            export = json.loads(body)
            data = export["task"]["data"] if fmt == "annotation" else export["data"]
            assert set(data) == {"image"}
    tasks, _, _ = ex.build_export(small_scenes[:2])
    assert all(set(t["data"]) == {"image", "attributes"} for t in tasks)
    assert ex.import_tasks(tasks)[0]["data"]["attributes"] == ex.scene_attributes(small_scenes[0])


def test_model_captions_differ_from_the_corrected_ones_sometimes(small_scenes):
    pairs = [(m, o.long_caption) for s in small_scenes for m, o in zip(ex.model_captions(s), s.objects)]
    assert any(m != r for m, r in pairs) and any(m == r for m, r in pairs)


def test_export_is_deterministic_and_rejects_unknown_formats(small_scenes):
    assert ex.export_objects(small_scenes[:2]) == ex.export_objects(small_scenes[:2])
    with pytest.raises(ValueError):
        ex.export_objects(small_scenes[:1], "csv")


def _exported_rle(scene, k):
    """The RLE the export writes for object k of a scene (its brushlabels item)."""
    return ex.scene_to_result(scene, ex.model_captions(scene))[2 * k]["value"]["rle"]


def test_rle_matches_the_sdk_reference_codec(small_scenes):
    mask = small_scenes[0].objects[0].mask
    assert _exported_rle(small_scenes[0], 0) == [int(v) for v in mask2rle(np.where(mask, 255, 0).astype(np.uint8))]


def test_export_rle_is_ls_io_rle_equal_to_the_sdk_codec_on_every_mask(small_scenes):
    """The export has no codec of its own (issue 14: the format lives in ls_io): every exported brush is ls_io.rle's
    encoding of the object's mask, byte-identical to label_studio_sdk's mask2rle, and decodes back to the mask."""
    checked = 0
    for scene in small_scenes[:4]:
        for k, obj in enumerate(scene.objects):
            reference = [int(v) for v in mask2rle(np.where(obj.mask, 255, 0).astype(np.uint8))]
            assert encode_rle(obj.mask) == reference
            assert _exported_rle(scene, k) == reference
            np.testing.assert_array_equal(_decode(_exported_rle(scene, k), *obj.mask.shape) == 255, obj.mask)
            checked += 1
    assert checked > 4


def test_command_line_writes_images_tasks_and_both_formats(tmp_path):
    code = ex.main(["--seed", "7", "--n", "3", "--out", str(tmp_path), "--format", "both", "--with-model-captions",
                    "--image-url-prefix", "/data/local-files/?d=synth/", "--size", "96x64"])
    assert code == 0
    from PIL import Image

    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 3 and Image.open(images[0]).size == (96, 64)
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert len(tasks) == 3 and tasks[0]["data"]["image"] == "/data/local-files/?d=synth/synthetic-7-0.png"
    assert tasks[0]["predictions"][0]["result"][0]["type"] == "brushlabels"
    assert sorted(p.name for p in (tmp_path / "export-annotation").iterdir()) == ["1", "2", "3"]
    assert sorted(p.name for p in (tmp_path / "export-task").iterdir()) == ["1.json", "2.json", "3.json"]
    annotation = json.loads((tmp_path / "export-annotation" / "2").read_text())
    assert annotation["result"][1]["value"]["text"][0].startswith("A ")
    assert set(tasks[0]["data"]) == {"image", "attributes"}
    assert set(annotation["task"]["data"]["attributes"]) == {item["id"] for item in annotation["result"]}
    plain = tmp_path / "plain"
    assert ex.main(["--seed", "7", "--n", "2", "--out", str(plain), "--no-attributes"]) == 0
    assert all(set(t["data"]) == {"image"} for t in json.loads((plain / "tasks.json").read_text()))
    assert "attributes" not in json.loads((plain / "export" / "1").read_text())["task"]["data"]


# ----------------------------------------------------------------------------------------------- videos
def _check_video_result(video, result, captions):
    """Per object: a videorectangle track with one enabled keyframe per frame (1-based) holding the box of that
    frame's mask in percent, then the textarea caption with the same id (label_config/video.xml's names)."""
    assert len(result) == 2 * len(video.objects)
    n_frames, height, width = video.frames.shape[:3]
    assert [item["id"] for item in result[::2]] == exv.video_region_ids(video)
    for k, obj in enumerate(video.objects):
        track, text = result[2 * k], result[2 * k + 1]
        assert track["type"] == "videorectangle" and text["type"] == "textarea" and track["id"] == text["id"]
        assert (track["from_name"], text["from_name"], track["to_name"]) == ("track", "caption", "video")
        assert uuid.UUID(track["id"]).version == 4
        value = track["value"]
        assert value["framesCount"] == n_frames and value["duration"] == n_frames / 25 and value["labels"] == ["object"]
        assert [key["frame"] for key in value["sequence"]] == list(range(1, n_frames + 1))
        for key, mask in zip(value["sequence"], obj.masks):
            ys, xs = np.nonzero(mask)
            assert key["enabled"] is True and key["rotation"] == 0 and key["time"] == round((key["frame"] - 1) / 25, 6)
            assert key["x"] * width / 100 == pytest.approx(xs.min()) and key["y"] * height / 100 == pytest.approx(ys.min())
            assert (key["x"] + key["width"]) * width / 100 == pytest.approx(xs.max() + 1)
            assert (key["y"] + key["height"]) * height / 100 == pytest.approx(ys.max() + 1)
        assert text["value"] == {"text": [captions[k]]}


def test_video_export_both_formats():
    from dam_model.synthetic import generate_video

    videos = [generate_video(9, index, num_frames=6) for index in range(3)]
    for fmt, key in (("annotation", "ls/1"), ("task", "ls/1.json")):
        objects = exv.export_video_objects(videos, fmt, prefix="ls", with_model_captions=(fmt == "task"))
        assert sorted(objects) == sorted(key.replace("1", str(i)) for i in (1, 2, 3))
        export = json.loads(objects[key])
        task = export["task"] if fmt == "annotation" else export
        annotation = export if fmt == "annotation" else export["annotations"][0]
        assert task["data"]["video"] == f"videos/{videos[0].scene_id}.mkv"
        assert task["data"]["attributes"] == exv.video_attributes(videos[0])
        assert [r["motion"] for r in task["data"]["attributes"].values()] == [o.attributes["motion"] for o in videos[0].objects]
        assert task["meta"]["synthetic"] == {"seed": 9, "index": 0, "scene_id": videos[0].scene_id, "num_frames": 6}
        _check_video_result(videos[0], annotation["result"], [o.long_caption for o in videos[0].objects])
        if fmt == "task":
            (prediction,) = export["predictions"]
            assert annotation["parent_prediction"] == prediction["id"]
            _check_video_result(videos[0], prediction["result"], ex.model_captions(videos[0]))
    plain = json.loads(exv.export_video_objects(videos[:1], with_attributes=False)["export/1"])
    assert set(plain["task"]["data"]) == {"video"}
    assert exv.export_video_objects(videos) == exv.export_video_objects(videos)
    with pytest.raises(ValueError):
        exv.export_video_objects(videos, "csv")


def test_video_file_is_lossless_and_deterministic(tmp_path):
    import av

    from dam_model.synthetic import generate_video

    video = generate_video(9, 1, num_frames=5)
    data = video_bytes(video.frames, exv.VIDEO_FRAME_RATE)
    assert data == video_bytes(video.frames, exv.VIDEO_FRAME_RATE)  # bit-exact muxing
    atomic_write_bytes(tmp_path / "sub" / "clip.mkv", video_bytes(video.frames))  # how the export writes it
    assert (tmp_path / "sub" / "clip.mkv").read_bytes() == data
    with av.open(str(tmp_path / "sub" / "clip.mkv")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 5 and all(np.array_equal(a, b) for a, b in zip(decoded, video.frames))
    with pytest.raises(ValueError):
        video_bytes(video.frames.astype(np.float32))


def test_command_line_writes_videos_tasks_and_both_formats(tmp_path):
    code = ex.main(["--kind", "video", "--seed", "4", "--n", "2", "--frames", "4", "--size", "64x64", "--out",
                    str(tmp_path), "--format", "both", "--video-url-prefix", "/data/local-files/?d=synth/"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["synthetic-video-4-0.mkv", "synthetic-video-4-1.mkv"]
    assert not (tmp_path / "images").exists()
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["video"] for t in tasks] == [f"/data/local-files/?d=synth/synthetic-video-4-{i}.mkv" for i in (0, 1)]
    annotation = json.loads((tmp_path / "export-annotation" / "2").read_text())
    assert annotation["result"][0]["value"]["framesCount"] == 4
    assert set(annotation["task"]["data"]["attributes"]) == {item["id"] for item in annotation["result"]}
    assert sorted(p.name for p in (tmp_path / "export-task").iterdir()) == ["1.json", "2.json"]
