"""dam_tools.ablation end to end at a toy budget: both variants train and are scored, the RESULT line is printed."""
import json
import re

from dam_tools import ablation


def test_ablation_runs_both_variants_and_prints_ratio(tmp_path, capsys):
    out = tmp_path / "ablation"
    assert ablation.main(["--steps", "2", "--train-scenes", "2", "--eval-scenes", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^RESULT ablation ratio=(\d+\.\d+|inf)$", printed, re.M)
    saved = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in saved["results"]] == ["focal", "global"]
    focal_cfg = json.loads((out / "focal" / "final" / "train_config.json").read_text())
    global_cfg = json.loads((out / "global" / "final" / "train_config.json").read_text())
    assert focal_cfg["global_only"] is False and global_cfg["global_only"] is True
    assert {k: v for k, v in focal_cfg.items() if k not in ("global_only", "out_dir")} == \
        {k: v for k, v in global_cfg.items() if k not in ("global_only", "out_dir")}  # equal budget
