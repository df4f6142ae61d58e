"""Tests of benchmarks/orl_faces.py: identity split, leave-one-out rank-1, config overrides, table; real ORL
data (../shared/data/orl-att-faces) only through the ``shared_data`` fixture, which skips when it is absent."""
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "orl_faces.py"


@pytest.fixture(scope="module")
def rf():
    spec = importlib.util.spec_from_file_location("bench_real_faces", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NAMES = [f"s{i}" for i in range(1, 41)]


def test_split_per_seed_is_disjoint_deterministic_and_seed_dependent(rf):
    train, test = rf.split_identities(NAMES, seed=0)
    assert len(train) == 30 and len(test) == 10
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(NAMES)
    assert rf.split_identities(NAMES, seed=0) == (train, test)
    assert rf.split_identities(NAMES, seed=1)[1] != test
    assert train == [n for n in NAMES if n in set(train)]  # input order kept


def test_split_fixed_holds_out_the_last_ten(rf):
    for seed in (0, 5):
        train, test = rf.split_identities(NAMES, seed=seed, mode="fixed")
        assert test == [f"s{i}" for i in range(31, 41)] and train == NAMES[:30]


def test_split_rejects_bad_mode_and_holdout(rf):
    with pytest.raises(ValueError, match="per-seed"):
        rf.split_identities(NAMES, 0, mode="random")
    with pytest.raises(ValueError, match="holdout"):
        rf.split_identities(NAMES[:5], 0, holdout=5)


def test_rank1_is_one_on_separated_clusters_and_chance_like_on_noise(rf):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 64)) * 10
    labels = np.repeat(np.arange(10), 10)
    feats = centres[labels] + rng.normal(size=(100, 64))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    assert rf.rank1_leave_one_out(feats, labels) == 1.0
    noise = rng.normal(size=(2000, 64))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    chance = rf.rank1_leave_one_out(noise, np.repeat(np.arange(10), 200))
    assert 0.06 < chance < 0.14


def test_rank1_hand_case_excludes_self_and_breaks_ties_low(rf):
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])
    labels = np.array([0, 0, 1, 0, 1])
    # nearest: 0->1 (ok), 1->0 (ok), 2->3 (cos .8 tie with 4, lower index 3: label 0, wrong),
    # 3->4 (wrong), 4->3 (wrong)
    assert rf.rank1_leave_one_out(feats, labels) == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        rf.rank1_leave_one_out(feats, labels[:3])


def test_pixel_features_are_centred_unit_rows(rf):
    images = np.random.default_rng(1).integers(0, 256, size=(4, 8, 6, 3), dtype=np.uint8)
    feats = rf.pixel_features(images)
    assert feats.shape == (4, 48)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(feats.mean(axis=1), 0.0, atol=1e-12)


def test_milestones_stay_inside_the_run(rf):
    assert rf.milestones_for(60) == [36, 51]
    assert rf.milestones_for(3) == [1, 2]
    assert rf.milestones_for(1) == []


@pytest.mark.parametrize("variant", ["mobilefacenet", "drconv_mobilefacenet", "condconv_mobilefacenet",
                                     "local_mobilefacenet"])
def test_study_config_sets_the_same_budget_for_every_variant(rf, variant, tmp_path):
    cfg = rf.study_config(variant, tmp_path / "data", tmp_path / "run", seed=2, steps=60, batch=16, lr=0.05)
    assert cfg.model.name == variant and tuple(cfg.model.input_size) == (112, 96)
    assert cfg.data.path == str(tmp_path / "data") and cfg.data.batch_size == 16 and cfg.data.num_workers == 0
    assert cfg.schedule.total_steps == 60 and tuple(cfg.schedule.milestones) == (36, 51)
    assert cfg.schedule.warmup_steps == 6 and cfg.optim.lr == 0.05 and cfg.train.seed == 2
    assert cfg.eval.sets == () and cfg.checkpoint.every == 60 and cfg.train.out_dir == str(tmp_path / "run")
    assert cfg.head.name == "amsoftmax" and not cfg.train.tensorboard


def test_summarize_and_table_show_mean_std_and_missing_seeds(rf):
    runs = [{"variant": "mobilefacenet", "seed": s, "rank1": v, "loss": 1.0, "cpu_s_per_step": 1.0}
            for s, v in ((0, 0.8), (1, 0.9))]
    runs.append({"variant": "drconv_mobilefacenet", "seed": 0, "rank1": 0.7, "loss": 2.0, "cpu_s_per_step": 5.0})
    rows = rf.summarize(runs, rf.VARIANTS)
    assert [r["variant"] for r in rows] == ["mobilefacenet", "drconv_mobilefacenet"]
    assert rows[0]["mean"] == pytest.approx(0.85) and rows[0]["std"] == pytest.approx(math.sqrt(0.005))
    assert rows[1]["std"] == 0.0 and rows[1]["step_ratio"] == pytest.approx(5.0)
    table = rf.format_table(rows, [0, 1])
    lines = table.splitlines()
    assert lines[0].startswith("| variant | rank-1 % (mean +- std) | seed 0 | seed 1 |")
    assert "| mobilefacenet | 85.0 +- 7.1 | 80.0 | 90.0 | 1.00 | 1.00x |" in lines
    assert "| drconv_mobilefacenet | 70.0 +- 0.0 | 70.0 | - | 2.00 | 5.00x |" in lines


def test_orl_identities_sorted_by_number(rf, tmp_path):
    for name in ("s10", "s2", "s1", "extra"):
        (tmp_path / name).mkdir()
    assert rf.orl_identities(tmp_path) == ["s1", "s2", "s10", "extra"]
    with pytest.raises(FileNotFoundError):
        rf.orl_identities(tmp_path / "missing")


def test_real_orl_align_pack_and_load(rf, shared_data, tmp_path):
    orl = shared_data / "orl-att-faces"
    if not orl.is_dir():
        pytest.skip(f"ORL faces not available: {orl} is absent")
    names = rf.orl_identities(orl)
    assert names == [f"s{i}" for i in range(1, 41)]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("s1", "s2", "s3"):
        shutil.copytree(orl / name, src / name)
    desc, summary = rf.align_all(src, tmp_path / "aligned", "center")
    assert desc.startswith("fallback") and summary["fallback"] == 30
    rec = rf.pack_training(tmp_path / "aligned", ["s1", "s3"], tmp_path / "work")
    assert (rec.parent / "property").read_text().strip() == "2,112,96"
    images, labels = rf.load_split_images(tmp_path / "aligned", ["s2", "s3"])
    assert images.shape == (20, 112, 96, 3) and images.dtype == np.uint8
    assert (labels == np.repeat([0, 1], 10)).all()
    assert (images[..., 0] == images[..., 2]).all()  # grey replicated to 3 channels


@pytest.mark.slow
def test_quick_study_end_to_end(rf, shared_data, tmp_path):
    orl = shared_data / "orl-att-faces"
    if not orl.is_dir():
        pytest.skip(f"ORL faces not available: {orl} is absent")
    out = tmp_path / "out.json"
    assert rf.main(["--quick", "--variants", "mobilefacenet", "--align", "center", "--data", str(orl),
                    "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["runs"]] == ["mobilefacenet"] and report["runs"][0]["steps"] == 3
    assert 0.0 <= report["runs"][0]["rank1"] <= 1.0
    assert "| mobilefacenet |" in report["markdown"] and "| pixels |" in report["markdown"]


def _fake_report(variants, seed=0, steps=30, rank1=0.5):
    runs = [{"variant": v, "seed": seed, "rank1": rank1, "loss": 1.0, "cpu_s_per_step": 2.0, "train_cpu_s": 60.0}
            for v in variants]
    return {"runs": runs, "pixel_runs": [{"variant": "pixels", "seed": seed, "rank1": 0.9}], "steps": steps,
            "batch": 16, "lr": 0.1, "split": "per-seed", "alignment": "a", "protocol": "p", "runtime_s": 60.0}


def test_merge_keeps_first_duplicate_and_rejects_different_settings(rf):
    a = _fake_report(["mobilefacenet", "condconv_mobilefacenet"], rank1=0.5)
    b = _fake_report(["condconv_mobilefacenet", "local_mobilefacenet"], rank1=0.7)
    runs, pixels = rf.merge_reports([a, b])
    assert [(r["variant"], r["rank1"]) for r in runs] == [
        ("mobilefacenet", 0.5), ("condconv_mobilefacenet", 0.5), ("local_mobilefacenet", 0.7)]
    assert len(pixels) == 1
    with pytest.raises(ValueError, match="steps"):
        rf.merge_reports([a, _fake_report(["local_mobilefacenet"], steps=60)])


def test_merge_cli_prints_and_writes_the_combined_table(rf, tmp_path, capsys):
    paths = []
    for i, variants in enumerate((["mobilefacenet"], ["drconv_mobilefacenet"])):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(_fake_report(variants)))
    out = tmp_path / "merged.md"
    assert rf.main(["--merge", *map(str, paths), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| mobilefacenet | 50.0 +- 0.0 | 50.0 |" in text and "| drconv_mobilefacenet | 50.0" in text
    assert "Merged from 2 processes" in text and "| pixels | 90.0" in text
    assert text.strip() in capsys.readouterr().out
