"""/predict with 8 brush regions on one image vs 8 single-region /predict calls (Flask test client).

Model: a tiny random-weight DAM (DAMConfig.tiny, tokenizer trained on synthetic captions, saved and loaded in the
official layout), greedy, MAX_NEW_TOKENS=16, on CPU with 1 thread. The batched request makes ONE describe call
with 8 masks; the single requests make 8 calls of 1. ratio = (8 single requests) / (1 request with 8 regions).

Also prints the per-region overhead of everything but the model (media read + decode, RLE decode of the regions,
results with RLE encode, JSON) at 1920x1080, measured with an instant stand-in model.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.app import create_app
from backend.model_store import default_loader
from backend.settings import Settings
from dam_model.config import DAMConfig
from dam_model.generation import Caption
from dam_model.modeling import DescribeAnythingModel
from dam_model.prompt import build_prompt
from dam_model.synthetic import generate_dataset, iter_region_samples
from dam_model.tokenizer import load_tokenizer, train_tokenizer
from ls_io.results import brush_value, region_item


def _tiny_dam(folder: Path) -> Path:
    scenes = generate_dataset(seed=11, n=8)
    texts = [s.caption for s in iter_region_samples(scenes, caption="long")]
    texts += [build_prompt("<image>\nDescribe the masked region in detail.")] * 4
    tokenizer = load_tokenizer(train_tokenizer(texts, 320, folder / "tok"))
    torch.manual_seed(0)
    model = DescribeAnythingModel.from_config(DAMConfig.tiny(vocab_size=len(tokenizer)), tokenizer=tokenizer)
    return Path(model.save_pretrained(folder / "dam"))


def _regions(height: int, width: int, n: int = 8) -> list[dict]:
    out = []
    for i in range(n):
        mask = np.zeros((height, width), dtype=bool)
        r, c = divmod(i, 4)
        mask[r * height // 2 + height // 8 : (r + 1) * height // 2 - height // 8,
             c * width // 4 + width // 16 : (c + 1) * width // 4 - width // 16] = True
        out.append(region_item(f"r{i}", "mask", "image", "brushlabels", brush_value(mask, ["object"]),
                               size=(width, height)))
    return out


def _time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args) -> float:
    torch.set_num_threads(1)  # OpenMP threads spin-wait on a busy shared box: one thread gives stable figures
    config = (Path(__file__).resolve().parents[2] / "label_config" / "image.xml").read_text()
    repeat = args.repeat or 5
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "media").mkdir()
        rng = np.random.default_rng(0)
        for name, (h, w) in {"small.png": (240, 320), "hd.png": (1080, 1920)}.items():
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp / "media" / name)

        def app_for(loader):
            settings = Settings(local_files_root=str(tmp / "media"), media_cache_dir=str(tmp / "cache"),
                                dam_model=str(dam_dir), segmenter="none", warm_up_on_start=False,
                                model_poll_seconds=0, max_new_tokens=16, events_file=str(tmp / "ev.jsonl"),
                                log_level="WARNING")
            return create_app(settings, loader=loader).test_client()

        def body(image: str, regions: list[dict]) -> dict:
            task = {"id": 1, "data": {"image": image}, "annotations": [{"result": regions}]}
            return {"tasks": [task], "label_config": config, "params": {"context": None}}

        dam_dir = _tiny_dam(tmp)
        client = app_for(default_loader)
        regions = _regions(240, 320)

        def batched():
            r = client.post("/predict", json=body("small.png", regions))
            assert r.status_code == 200 and len(r.json["results"][0]["result"]) == 16, r.json

        def singles():
            for region in regions:
                r = client.post("/predict", json=body("small.png", [region]))
                assert r.status_code == 200, r.json

        batched(), singles()  # warm up
        pairs = []
        for _ in range(repeat):  # interleaved, so load from other processes hits both sides alike
            start = time.perf_counter()
            batched()
            middle = time.perf_counter()
            singles()
            pairs.append((middle - start, time.perf_counter() - middle))
        t_batch = statistics.median(p[0] for p in pairs)
        t_single = statistics.median(p[1] for p in pairs)
        print(f"tiny DAM, 320x240, 8 regions: one request {t_batch * 1000:.1f} ms, 8 requests {t_single * 1000:.1f} ms"
              f" -> {t_single / t_batch:.2f}x")

        class Instant:
            config = type("Cfg", (), {"image_query": "<image>\nDescribe the masked region in detail."})()

            def describe(self, image, masks, **_):
                return [Caption("a region", -0.1, []) for _ in masks]

        hd = app_for(lambda *a: Instant())
        hd_regions = _regions(1080, 1920)
        t_hd = _time(lambda: hd.post("/predict", json=body("hd.png", hd_regions)), repeat)
        t_hd1 = _time(lambda: hd.post("/predict", json=body("hd.png", hd_regions[:1])), repeat)
        print(f"1920x1080 overhead without the model: 8 regions {t_hd * 1000:.1f} ms, 1 region {t_hd1 * 1000:.1f} ms, "
              f"{(t_hd - t_hd1) / 7 * 1000:.2f} ms per extra region")
    return t_single / t_batch
