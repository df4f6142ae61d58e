"""Tests of benchmarks/real_faces.py (the real-faces-323 study): val protocol, metrics, table, and a smoke run on a
few real identities from ../shared/data/real-faces-323 (skipped when ../shared is absent)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def rf(load_script):
    return load_script("benchmarks/real_faces.py")


def test_val_protocol_is_deterministic_complete_and_balanced(rf):
    labels = np.repeat(np.arange(6), [3, 4, 2, 5, 3, 3])
    p = rf.val_protocol(labels)
    n = len(labels)
    assert len(p["genuine"]) + len(p["impostor"]) == n * (n - 1) // 2
    assert len(p["genuine"]) == sum(k * (k - 1) // 2 for k in (3, 4, 2, 5, 3, 3))
    assert (labels[p["genuine"][:, 0]] == labels[p["genuine"][:, 1]]).all()
    assert (labels[p["impostor"][:, 0]] != labels[p["impostor"][:, 1]]).all()
    b, same = p["balanced"], p["balanced_issame"]
    assert same.sum() == (~same).sum() == len(p["genuine"])           # fewer genuine than BALANCED_PAIRS
    assert ((labels[b[:, 0]] == labels[b[:, 1]]) == same).all()
    again = rf.val_protocol(labels)
    assert all(np.array_equal(p[k], again[k]) for k in p)


def test_rank1_and_score_separate_good_from_random_features(rf):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    centres = rng.standard_normal((10, 32))
    good = centres[labels] + 0.1 * rng.standard_normal((60, 32))
    bad = rng.standard_normal((60, 32))
    assert rf.rank1_leave_one_out(good, labels) == 1.0
    assert rf.rank1_leave_one_out(bad, labels) < 0.5
    s_good, s_bad = rf.score(good, labels), rf.score(bad, labels)
    assert s_good["accuracy"] > 0.95 and s_good["tar_far1e-3"] > 0.9
    assert s_bad["accuracy"] < 0.7 and s_bad["tar_far1e-3"] < 0.2


def test_summarize_and_table(rf):
    records = [{"variant": "mobilefacenet", "seed": s, "steps": 10, "accuracy": a, "tar_far1e-3": 0.5, "rank1": 0.6,
                "final_loss": 3.0, "cpu_s": 10.0} for s, a in ((0, 0.8), (1, 0.9))]
    records.append({"variant": "drconv_mobilefacenet", "seed": 0, "steps": 10, "accuracy": 0.85,
                    "tar_far1e-3": 0.55, "rank1": 0.7, "final_loss": 2.5, "cpu_s": 20.0})
    rows = rf.summarize(records)
    assert [r["variant"] for r in rows] == ["mobilefacenet", "drconv_mobilefacenet"]
    assert rows[0]["accuracy"][0] == pytest.approx(0.85) and rows[0]["accuracy"][1] == pytest.approx(0.0707, 1e-3)
    assert rows[1]["cpu_per_step_ratio"] == pytest.approx(2.0)
    table = rf.format_table(rows)
    assert "85.0 ± 7.1 (80.0, 90.0)" in table and "2.00x" in table


def _subset(src: Path, dst: Path, ids: int, per_id: int) -> None:
    for folder in sorted(p for p in src.iterdir() if p.is_dir())[:ids]:
        (dst / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_id]:
            shutil.copy(image, dst / folder.name / image.name)


def test_study_smoke_on_a_few_real_identities_resumes_and_reports(rf, shared_data, tmp_path, capsys):
    src = shared_data / "real-faces-323"
    if not (src / "train").is_dir():
        pytest.skip(f"real data not available: {src} is absent")
    data = tmp_path / "data"
    _subset(src / "train", data / "train", 4, 6)
    _subset(src / "val", data / "val", 3, 4)
    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), "--steps", "2", "--warmup", "1", "--batch", "4",
            "--runs", "mobilefacenet:0"]
    assert rf.main(args) == 0
    record = json.loads((out / "mobilefacenet_s0" / "result.json").read_text())
    assert record["genuine_pairs"] == 3 * 6 and record["impostor_pairs"] == 66 - 18
    assert 0.0 <= record["rank1"] <= 1.0 and np.isfinite(record["final_loss"])
    mtime = (out / "mobilefacenet_s0" / "result.json").stat().st_mtime
    assert rf.main(args) == 0                                       # finished runs are not trained again
    assert (out / "mobilefacenet_s0" / "result.json").stat().st_mtime == mtime
    assert rf.main(["--out", str(out), "--report", "--runs", "mobilefacenet:0"]) == 0
    assert "| mobilefacenet | 1 |" in capsys.readouterr().out


def test_settings_name_their_overrides_and_sort_after_their_variant(rf, tmp_path):
    assert rf.split_name("mobilefacenet") == ("mobilefacenet", [])
    assert rf.split_name("drconv_mobilefacenet@basis") == ("drconv_mobilefacenet", ["model.options.generator=basis"])
    assert rf.split_name("drconv_mobilefacenet@paper+regionwd100") == (
        "drconv_mobilefacenet", ["model.options.guide_norm=false", "model.options.init=spread",
                                 "optim.weight_decay_region_factor=100"])
    with pytest.raises(SystemExit, match="unknown setting 'nope'"):
        rf.split_name("drconv_mobilefacenet@nope")
    with pytest.raises(SystemExit, match="unknown variant"):
        rf.split_name("resnet@basis")
    cfg = rf.study_config("drconv_mobilefacenet@guide0.1", tmp_path, tmp_path / "o", seed=1, steps=10, warmup=2,
                          batch=4, lr=0.1)
    assert cfg.model.name == "drconv_mobilefacenet" and cfg.model.options["guide_grad_scale"] == 0.1
    records = [{"variant": v, "seed": 0, "steps": 10, "accuracy": 0.8, "tar_far1e-3": 0.5, "rank1": 0.6,
                "final_loss": 3.0, "cpu_s": 10.0}
               for v in ("drconv_mobilefacenet@basis", "local_mobilefacenet", "mobilefacenet", "drconv_mobilefacenet")]
    assert [r["variant"] for r in rf.summarize(records)] == [
        "mobilefacenet", "drconv_mobilefacenet", "drconv_mobilefacenet@basis", "local_mobilefacenet"]
    with pytest.raises(SystemExit, match="variant\\[@setting\\]:seed"):
        rf.main(["--runs", "drconv_mobilefacenet", "--report", "--out", str(tmp_path / "r")])
