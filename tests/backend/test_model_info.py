"""GET /versions shows the served model's provenance: base model + licence, training data, the metrics that promoted
it, and the segmenter's licence (dam_model.versions); the loop's promote step writes that record for every version."""
from __future__ import annotations

import json
from pathlib import Path

from dam_loop.steps.promote import promote
from dam_model.versions import KNOWN_BASE_MODELS, PROVENANCE_NAME, base_model_of, version_info, with_lineage


def candidate(tmp_path: Path, name: str, init: str, extra: dict | None = None) -> Path:
    """A model folder as dam_model.train writes it: config.json + provenance.json naming its init model."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    record = {"train_config": {"extra": {"init_model": init, "snapshot_id": "snap-1", "dataset_counts": {"train": 4},
                                         **(extra or {})}}, "metrics": {"steps": 2}}
    (folder / PROVENANCE_NAME).write_text(json.dumps(record))
    return folder


def test_base_model_records_follow_the_model_cards():
    assert base_model_of("nvidia/DAM-3B")["licence"] == "NVIDIA Noncommercial License"
    assert base_model_of("nvidia/DAM-3B-Video")["licence"] == "NVIDIA Noncommercial License"
    assert set(KNOWN_BASE_MODELS) == {"nvidia/DAM-3B", "nvidia/DAM-3B-Video"}
    assert base_model_of("someone/else")["licence"].startswith("unknown")  # never guessed
    inherited = {"base_model": {"id": "nvidia/DAM-3B", "licence": "NVIDIA Noncommercial License"}}
    assert base_model_of("/models/versions/v1", inherited)["id"] == "nvidia/DAM-3B"


def test_promoted_versions_carry_lineage_through_fine_tunes(tmp_path):
    root = tmp_path / "models"
    promote(root, candidate(tmp_path, "c1", "nvidia/DAM-3B"), metrics={"score": 0.7}, version="v1",
            provenance={"snapshot_id": "snap-1"})
    first = root / "versions" / "v1"
    promote(root, candidate(tmp_path, "c2", str(first)), metrics={"score": 0.8}, version="v2")
    for version in ("v1", "v2"):
        record = json.loads((root / "versions" / version / PROVENANCE_NAME).read_text())
        assert record["base_model"]["id"] == "nvidia/DAM-3B"
        assert record["base_model"]["licence"] == "NVIDIA Noncommercial License"
        assert record["training_data"]["snapshot_id"] == "snap-1" and record["training_data"]["counts"] == {"train": 4}
        assert record["promoted_metrics"]["score"] in (0.7, 0.8)


def test_versions_route_returns_the_served_models_provenance(tmp_path, make_app):
    root = tmp_path / "models"
    promote(root, candidate(tmp_path, "c1", "nvidia/DAM-3B"), metrics={"score": 0.7, "score_name": "average"},
            version="v1")
    client = make_app(models_root=str(root), segmenter="fake").test_client()
    reply = client.get("/versions").json
    assert reply["current"] == "v1"
    info = reply["model_info"]
    assert info["version"] == "v1" and info["promoted_metrics"]["score"] == 0.7
    assert info["base_model"] == {"id": "nvidia/DAM-3B", **KNOWN_BASE_MODELS["nvidia/DAM-3B"]}
    assert info["training_data"]["snapshot_id"] == "snap-1"
    assert info["segmenter"]["id"] == "facebook/sam2.1-hiera-large" and info["segmenter"]["licence"] == "Apache-2.0"


def test_a_hub_id_served_directly_shows_its_licence(make_app):
    info = make_app(dam_model="nvidia/DAM-3B", segmenter="fake").test_client().get("/versions").json["model_info"]
    assert info["base_model"]["licence"] == "NVIDIA Noncommercial License"


def test_lineage_of_an_older_tiny_build():
    record = with_lineage({"extra": {"profile": "ci", "cache_key": "ci-123"}})
    assert record["base_model"]["id"] == "tiny-dam/ci" and record["base_model"]["licence"] == "MIT"
    assert version_info(None, "/some/folder")["base_model"]["licence"].startswith("unknown")
