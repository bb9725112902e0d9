"""The backend over the real Sam2Segmenter class (opt-in: BACKEND_SAM2_TESTS=1; minutes on 2 CPU cores).

Random weights by default (checks the wiring: prompts in pixels, masks at image size, masklets per frame);
set SAM2_CHECKPOINT (and SAM2_CONFIG) to run the same flow with real weights.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from bk_helpers import CAPTURED_CONFIG, VIDEO_CONFIG, load_payload, predict_body

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("BACKEND_SAM2_TESTS") != "1", reason="opt-in: BACKEND_SAM2_TESTS=1"),
]


@pytest.fixture(scope="module")
def sam2():
    from dam_model.segmentation import Sam2Segmenter

    checkpoint = os.environ.get("SAM2_CHECKPOINT") or None
    config = os.environ.get("SAM2_CONFIG", "tiny")
    return Sam2Segmenter.from_checkpoint(config, checkpoint, device="cpu", image_size=None if checkpoint else 256)


def test_interactive_and_video_with_sam2(make_app, sam2, fake_dam, media_root):
    import av

    from ls_io.rle import decode_rle

    client = make_app(segmenter=sam2).test_client()
    body = load_payload("captured_predict_request_interactive.json")["body"]
    body.update(label_config=CAPTURED_CONFIG)
    body["tasks"][0]["data"]["image"] = "images/img1.png"
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.json
    brush, text = r.json["results"][0]["result"]
    assert decode_rle(brush["value"]["rle"], 48, 64).shape == (48, 64) and brush["id"] == text["id"]

    path = media_root / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            frame = np.full((48, 64, 3), 200, np.uint8)
            frame[10:30, 8 + i : 28 + i] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    track = {"id": "t1", "type": "videorectangle", "from_name": "track", "to_name": "video",
             "value": {"framesCount": 4, "sequence": [{"frame": 2, "x": 10, "y": 20, "width": 35, "height": 45,
                                                       "enabled": True, "rotation": 0, "time": 0.1}]}}
    task = {"id": 2, "data": {"video": "clip.mp4"}, "annotations": [{"result": [track]}]}
    r = client.post("/predict", json=predict_body([task], VIDEO_CONFIG))
    assert r.status_code == 200, r.json
    items = r.json["results"][0]["result"]
    if items:  # random weights may predict an empty masklet (then the track is skipped, and logged)
        assert items[1]["id"] == "t1" and fake_dam.video_calls[-1][0] == 8
