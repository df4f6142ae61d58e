"""The one-command demo at smoke size (slow: CI runs it once), and its summary table."""
import json
from pathlib import Path

import pytest

from facerec.cli.demo import main
from facerec.demo import format_summary

ROOT = Path(__file__).resolve().parents[2]


def _summary(**over):
    s = {"model": "drconv_mobilefacenet", "input_size": [112, 96], "steps": 10, "batch_size": 8,
         "train_images": 100, "train_identities": 10, "checkpoint": "c.pt",
         "verification": {"synth_val_acc": 0.8125, "synth_val_acc_std": 0.05},
         "megaface": {"num_distractors": 1000, "num_probes": 30, "num_trials": 120, "rank1": 0.5,
                      "cmc": {"1": 0.5}, "tar_at_far": {"1e-04": 0.25}, "flip": False},
         "mask_figure": "m.png", "seconds": {"synthetic data": 2.0, "training": 10.0, "megaface": 3.0, "masks": 1.0}}
    s.update(over)
    return s


def test_summary_table_has_every_stage_and_total():
    table = format_summary(_summary())
    assert "| verification synth_val | 0.8125 +- 0.0500 |" in table
    assert "rank-1 @ 1000 distractors | 0.5000 (120 trials, 30 probes, no flip)" in table
    assert "| TAR @ FAR=1e-04 | 0.2500 |" in table
    assert table.splitlines()[-1] == "| total | | 16 |"


def test_bad_override_is_a_clear_error(capsys):
    assert main(["--config", str(ROOT / "configs" / "demo.yaml"), "--set", "schedule.total_stepz=3"]) == 2
    assert "schedule.total_steps" in capsys.readouterr().err


# What the quick demo must show: that training learns. Chance is 0.5 for the balanced verification pairs and
# 1 / (distractors + 1) for rank-1. Measured with the quick demo over training seeds 0, 1, 2 (2-core CPU, torch
# 2.13.0): trained, verification 0.80 / 0.84 / 0.89 and rank-1 0.18 / 0.27 / 0.28; the same runs without
# learning (--set optim.lr=1.0e-12, what a broken backward leaves) 0.68 / 0.63 / 0.68 and 0.07 / 0.08 / 0.07:
# random-init features already beat chance on this set. The bounds sit halfway between the two.
ACC_MARGIN = 0.24      # accuracy >= 0.74
RANK1_MARGIN = 0.12    # rank-1 >= 0.121 at 1,000 distractors


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["--config", str(ROOT / "configs" / "demo.yaml"), "--quick",
               "--set", f"data.path={tmp_path / 'data'}", "--set", f"train.out_dir={tmp_path / 'run'}"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["verification"]["synth_val_acc"] >= 0.5 + ACC_MARGIN, summary["verification"]
    mf = summary["megaface"]
    assert mf["num_distractors"] == 1000 and mf["num_trials"] == 6 * 5 * 4
    assert mf["rank1"] >= 1 / (mf["num_distractors"] + 1) + RANK1_MARGIN, mf
    assert Path(summary["mask_figure"]).is_file()
    assert "| total |" in capsys.readouterr().out


def test_importing_the_library_leaves_the_environment_alone():
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); import facerec.demo, facerec.models, facerec.train; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
