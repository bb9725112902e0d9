"""dam_loop.dataset: rows carry their kind (older image rows read as "image"), the writer swaps the folder in whole,
and read_samples gives dam_model.data samples that share decoded images."""
from __future__ import annotations

import numpy as np

from dam_loop.dataset import SAMPLES_FILE, DatasetWriter, load_samples, read_info, read_rows, read_samples
from dam_model.data import RegionSample
from dam_model.fileio import write_jsonl


def test_writer_commits_whole_folder_and_reader_gives_samples(tmp_path):
    out = tmp_path / "datasets" / "snap"
    writer = DatasetWriter(out)
    image = np.zeros((8, 10, 3), np.uint8)
    image[2:5, 3:7] = (200, 10, 10)
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    writer.write_image("images/a.png", image)
    writer.write_image("images/unused.png", image)
    writer.write_mask("masks/m1.png", mask)
    writer.write_mask("masks/m2.png", ~mask)
    rows = [{"kind": "image", "id": f"r{i}", "image": "images/a.png", "mask": f"masks/m{i}.png", "caption": f"c{i}",
             "split": "train"} for i in (1, 2)]
    assert not out.exists()
    writer.commit(rows, [], [], {"counts": {"samples": 2}})
    assert read_info(out)["counts"]["samples"] == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png"]  # files no row uses are dropped
    assert not list(tmp_path.joinpath("datasets").glob(".staging*"))
    samples = read_samples(out, load_samples(out))
    assert all(isinstance(s, RegionSample) for s in samples) and samples[0].image is samples[1].image
    np.testing.assert_array_equal(samples[0].mask, mask)
    np.testing.assert_array_equal(samples[0].image, image)


def test_image_rows_without_kind_read_as_image(tmp_path):
    write_jsonl(tmp_path / SAMPLES_FILE, [{"id": "old", "image": "i.png", "mask": "m.png", "split": "val"}])
    assert read_rows(tmp_path, SAMPLES_FILE)[0]["kind"] == "image"
    assert read_rows(tmp_path, SAMPLES_FILE, "train") == []
